"""``vlmplug data negatives``: hallucination probes (POPE) and "object does not exist" training rows
(registered by ``vlmplug.plugins.datasets.negatives`` into the core's ``vlmplug data`` group).

The guide's remedy for a model that hallucinates objects is negative examples: questions about
objects that are *not* in the image, answered "no". This command reads what each image holds, from

* a COCO instances file (``instances_val2014.json``: ``images``, ``annotations`` with
  ``category_id``, ``categories``): an image's objects are the categories annotated on it;
* ``{image, objects: [...]}`` records (JSON list or JSONL);
* captions (a COCO captions file or ``{image, caption(s)}`` records): an image's objects are the
  vocabulary names (``--vocabulary``, else COCO's 80 categories) its captions mention as words,

and writes ``messages`` rows. ``--mode pope`` follows POPE (Li et al. 2023, "Evaluating Object
Hallucination in Large Vision-Language Models"): per image, ``k`` annotated objects asked as "Is there a
{object} in the image?" -> yes and ``k`` absent ones -> no, the absent ones drawn by ``random``,
``popular`` (the objects in most images of the dataset) or ``adversarial`` (the objects in most images
together with the image's own objects) sampling. ``--mode negatives`` writes training rows: full-sentence
answers, the negatives mixed with the positives at ``--negative-ratio``. Everything is a pure function
of the input and ``--seed``.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from vlmplug.data_cli import MessagesWriter, handled, write_jsonl

#: COCO's 80 object categories (the detection / POPE vocabulary), in COCO's category order.
COCO_CATEGORIES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
#: Plural forms that adding "s" / "es" does not give (matched in captions besides the name itself).
IRREGULAR_PLURALS: dict[str, tuple[str, ...]] = {
    "person": ("people", "persons"),
    "knife": ("knives",),
    "mouse": ("mice",),
    "sheep": ("sheep",),
    "skis": ("skis",),
    "scissors": ("scissors",),
}
#: Names that are plural already: training rows ask "Are there ..." about them.
PLURAL_NAMES = frozenset({"skis", "scissors"})
SAMPLINGS = ("random", "popular", "adversarial")
MODES = ("pope", "negatives")
IMAGE = "<image>"
#: POPE's question, word for word (its answers are the bare "yes" / "no").
POPE_QUESTION = "Is there a {obj} in the image?"
FIRST_PROBLEMS = 5
URIS = ("data:", "http://", "https://")


@dataclass
class ImageObjects:
    """One image and the objects known to be in it."""

    image: str  # the path resolved against the input's folder (or --image-root), or a URI
    key: Any  # the COCO image id, else the image as written in the input
    objects: set[str] = field(default_factory=set)


@dataclass
class Source:
    """What the input says: every image with its objects, and the names a negative may be drawn from."""

    kind: str  # "coco-instances", "objects" or "captions"
    images: list[ImageObjects]
    vocabulary: list[str]  # sorted
    problems: list[str] = field(default_factory=list)  # bad records (left out under --skip-bad)


# -- reading ----------------------------------------------------------------------------------------------


def normalize(name: str) -> str:
    """An object name as questions write it: lower case, single spaces."""
    return " ".join(name.lower().split())


def read_vocabulary(path: Path) -> list[str]:
    """One object name per line (blank lines and ``#`` comments ignored)."""
    from vlmplug.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"--vocabulary {path}: file not found; give a text file with one object name per line")
    names = [normalize(line.split("#", 1)[0]) for line in path.read_text(encoding="utf-8").splitlines()]
    names = sorted({n for n in names if n})
    if not names:
        raise ConfigError(f"--vocabulary {path}: no names in it; write one object name per line")
    return names


def coco_instances(data: dict[str, Any], path: Path, root: Path) -> tuple[list[ImageObjects], list[str], list[str]]:
    """A COCO instances file: ``(images with the categories annotated on them, category names, problems)``;
    images without annotations come with no objects."""
    from vlmplug.errors import DataError

    from ._messages import _resolve

    images, annotations, categories = data.get("images"), data.get("annotations"), data.get("categories")
    if not all(isinstance(x, list) for x in (images, annotations, categories)):
        raise DataError(
            f"{path}: a COCO instances file needs the lists 'images' ({{id, file_name}}), 'annotations' "
            f"({{image_id, category_id}}) and 'categories' ({{id, name}}); got keys {sorted(data)[:8]}"
        )
    assert isinstance(images, list) and isinstance(annotations, list) and isinstance(categories, list)
    names = {
        c["id"]: normalize(c["name"]) for c in categories if isinstance(c, dict) and isinstance(c.get("name"), str)
    }
    by_id: dict[Any, ImageObjects] = {}
    for img in images:
        if isinstance(img, dict) and isinstance(img.get("file_name"), str) and "id" in img:
            by_id[img["id"]] = ImageObjects(_resolve(img["file_name"], root), img["id"])
    problems = []
    for n, ann in enumerate(annotations):
        where = f"{path} annotation {n}"
        if not isinstance(ann, dict):
            problems.append(f"{where}: expected an object {{image_id, category_id}}, got {type(ann).__name__}")
        elif ann.get("image_id") not in by_id:
            problems.append(
                f"{where}: image_id {ann.get('image_id')!r} is not in 'images' (or has no file_name); use the "
                f"annotations file of this image set"
            )
        elif ann.get("category_id") not in names:
            problems.append(
                f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'; use the annotations "
                f"file as COCO ships it"
            )
        else:
            by_id[ann["image_id"]].objects.add(names[ann["category_id"]])
    return list(by_id.values()), sorted(set(names.values())), problems


def object_records(rows: list[tuple[int, Any]], path: Path, root: Path) -> tuple[list[ImageObjects], list[str]]:
    """``{"image": path, "objects": [name, ...]}`` records (the same image twice: its objects merged)."""
    from ._messages import _resolve

    by_image: dict[str, ImageObjects] = {}
    problems = []
    for n, row in rows:
        where = f"{path}:{n}" if path.suffix == ".jsonl" else f"{path} record {n}"
        problem = _object_row_problem(row, where)
        if problem is not None:
            problems.append(problem)
            continue
        image = _resolve(row["image"], root)
        entry = by_image.setdefault(image, ImageObjects(image, row["image"]))
        entry.objects.update(normalize(o) for o in row["objects"])
    return list(by_image.values()), problems


def _object_row_problem(row: Any, where: str) -> str | None:
    if not isinstance(row, dict):
        return f"{where}: expected an object {{image, objects}}, got {type(row).__name__}"
    if not isinstance(row.get("image"), str) or not row["image"]:
        return f"{where}: 'image' must be an image path, got {row.get('image')!r:.80}"
    objects = row.get("objects")
    if not isinstance(objects, list) or not all(isinstance(o, str) and o.strip() for o in objects):
        return f"{where}: 'objects' must be a list of object names (strings), got {objects!r:.80}"
    return None


def name_patterns(vocabulary: Iterable[str]) -> list[tuple[str, re.Pattern[str]]]:
    """A word-boundary pattern per name (its plurals included), longest names first, so "hot dog"
    claims its words before "dog" is looked for."""
    out = []
    for name in sorted(vocabulary, key=lambda n: (-len(n), n)):
        forms = {name, name + "s", name + "es", *IRREGULAR_PLURALS.get(name, ())}
        alternatives = "|".join(r"\s+".join(map(re.escape, f.split())) for f in sorted(forms, key=len, reverse=True))
        out.append((name, re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)))
    return out


def objects_in(text: str, patterns: list[tuple[str, re.Pattern[str]]]) -> set[str]:
    """The names mentioned in ``text`` as words (a span counts once, for the longest name over it)."""
    taken: list[tuple[int, int]] = []
    found = set()
    for name, pattern in patterns:
        for m in pattern.finditer(text):
            if not any(m.start() < end and start < m.end() for start, end in taken):
                taken.append(m.span())
                found.add(name)
    return found


def caption_images(records: list[Any], vocabulary: list[str]) -> list[ImageObjects]:
    """Caption records (``_caption.Record``) -> images whose objects are the names their captions mention."""
    patterns = name_patterns(vocabulary)
    by_image: dict[str, ImageObjects] = {}
    for r in records:
        entry = by_image.setdefault(r.image, ImageObjects(r.image, r.image_id))
        for caption in r.captions:
            entry.objects |= objects_in(caption, patterns)
    return list(by_image.values())


def _row_kind(rows: list[tuple[int, Any]], path: Path) -> str:
    """``objects`` or ``captions``, from the first record that is an object."""
    from vlmplug.errors import DataError

    for n, row in rows:
        if isinstance(row, dict):
            if "objects" in row:
                return "objects"
            if "caption" in row or "captions" in row:
                return "captions"
            raise DataError(
                f"{path}:{n}: neither 'objects' nor 'caption'/'captions' in the record; give each image its "
                f"object names ({{image, objects: [...]}}) or its captions ({{image, caption}})"
            )
    raise DataError(f"{path}: no records; give {{image, objects: [...]}} or {{image, caption}} records")


def read_source(path: Path, image_root: str | None, vocabulary: list[str] | None) -> Source:
    """Read ``path`` (COCO instances or captions JSON, or object / caption records)."""
    from vlmplug.errors import ConfigError

    from ._caption import _load_json, coco_records, simple_records
    from ._messages import _rows

    root = Path(image_root) if image_root else path.parent
    data = _load_json(path) if path.suffix == ".json" else None
    if isinstance(data, dict) and "categories" in data:
        if vocabulary is not None:
            raise ConfigError(
                f"--vocabulary: {path} is a COCO instances file, whose 'categories' are the vocabulary; drop "
                f"--vocabulary (it is for captions and object lists)"
            )
        images, names, problems = coco_instances(data, path, root)
        return Source("coco-instances", images, names, problems)
    if isinstance(data, dict):
        records, errors = coco_records(data, path, root)
        return _caption_source(records, [str(e) for e in errors], vocabulary)
    rows = list(enumerate(data)) if isinstance(data, list) else _rows(path)
    unreadable = [str(row) for _, row in rows if isinstance(row, Exception)]  # JSONL lines that are not JSON
    rows = [(n, row) for n, row in rows if not isinstance(row, Exception)]
    if _row_kind(rows, path) == "captions":
        records, errors = simple_records(rows, path, root)
        return _caption_source(records, unreadable + [str(e) for e in errors], vocabulary)
    images, problems = object_records(rows, path, root)
    problems = unreadable + problems
    known = set(vocabulary or ()) | {o for img in images for o in img.objects}
    return Source("objects", images, sorted(known), problems)


def _caption_source(records: list[Any], problems: list[str], vocabulary: list[str] | None) -> Source:
    names = vocabulary if vocabulary is not None else sorted(COCO_CATEGORIES)
    return Source("captions", caption_images(records, names), names, problems)


def stop_on_problems(source: Source, path: Path, skip_bad: bool) -> None:
    """A DataError listing the bad records, unless ``--skip-bad`` (they are counted then)."""
    from vlmplug.errors import DataError

    if not source.problems or skip_bad:
        return
    more = f"\n  (and {len(source.problems) - FIRST_PROBLEMS} more)" if len(source.problems) > FIRST_PROBLEMS else ""
    raise DataError(
        f"{len(source.problems)} bad record(s) in {path}:\n  "
        + "\n  ".join(source.problems[:FIRST_PROBLEMS])
        + more
        + "\nfix them, or pass --skip-bad to leave them out (counted)"
    )


# -- sampling ---------------------------------------------------------------------------------------------


@dataclass
class Stats:
    """How often each object occurs in the dataset (``frequency``: images holding it) and with which
    others (``cooccurrence[a][b]``: images holding both)."""

    frequency: Counter[str]
    cooccurrence: dict[str, Counter[str]]

    @classmethod
    def of(cls, images: Iterable[ImageObjects]) -> Stats:
        frequency: Counter[str] = Counter()
        cooccurrence: dict[str, Counter[str]] = {}
        for img in images:
            frequency.update(img.objects)
            for a in img.objects:
                cooccurrence.setdefault(a, Counter()).update(b for b in img.objects if b != a)
        return cls(frequency, cooccurrence)

    def popular(self, candidates: Iterable[str]) -> list[str]:
        """``candidates``, the most frequent first (ties: by name)."""
        return sorted(candidates, key=lambda o: (-self.frequency[o], o))

    def adversarial(self, present: set[str], candidates: Iterable[str]) -> list[str]:
        """``candidates``, those sharing most images with the ``present`` objects first (ties: the more
        frequent, then by name)."""

        def together(o: str) -> int:
            return sum(self.cooccurrence.get(p, Counter())[o] for p in present)

        return sorted(candidates, key=lambda o: (-together(o), -self.frequency[o], o))


def draw_negatives(
    img: ImageObjects, k: int, sampling: str, vocabulary: list[str], stats: Stats, rng: random.Random
) -> list[str]:
    """``k`` objects absent from ``img`` (fewer if the vocabulary has fewer), by ``sampling``."""
    absent = [o for o in vocabulary if o not in img.objects]
    k = min(k, len(absent))
    if sampling == "random":
        return rng.sample(absent, k)
    if sampling == "popular":
        return stats.popular(absent)[:k]
    return stats.adversarial(img.objects, absent)[:k]


def draw_positives(img: ImageObjects, k: int, rng: random.Random) -> list[str]:
    """``k`` of the image's objects (all of them when it has no more), drawn at random."""
    return rng.sample(sorted(img.objects), min(k, len(img.objects)))


def image_rng(seed: int, img: ImageObjects) -> random.Random:
    """The image's own generator: its draws do not depend on the other images or their order."""
    return random.Random(f"vlmplug-negatives:{seed}:{img.key}")


# -- rows -------------------------------------------------------------------------------------------------


def _a(obj: str) -> str:
    return f"an {obj}" if obj[:1] in "aeiou" else f"a {obj}"


def pope_row(img: ImageObjects, obj: str, label: str, sampling: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"{IMAGE}\n{POPE_QUESTION.format(obj=obj)}"},
            {"role": "assistant", "content": label},
        ],
        "images": [img.image],
        "label": label,
        "object": obj,
        "sampling": sampling,
        "image_id": img.key,
    }


def training_row(img: ImageObjects, obj: str, present: bool, sampling: str) -> dict[str, Any]:
    """A question about ``obj`` with a full-sentence answer ("No, there is no cat in the image.")."""
    if obj in PLURAL_NAMES:
        question = f"Are there {obj} in the image?"
        answer = f"Yes, there are {obj} in the image." if present else f"No, there are no {obj} in the image."
    else:
        question = f"Is there {_a(obj)} in the image?"
        answer = f"Yes, there is {_a(obj)} in the image." if present else f"No, there is no {obj} in the image."
    return {
        "messages": [{"role": "user", "content": f"{IMAGE}\n{question}"}, {"role": "assistant", "content": answer}],
        "images": [img.image],
        "label": "yes" if present else "no",
        "object": obj,
        "sampling": sampling,
        "image_id": img.key,
    }


@dataclass
class Plan:
    """The rows to write and what was left out."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    used: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> images


def eligibility(img: ImageObjects, mode: str, k: int, vocabulary_size: int) -> str | None:
    """Why ``img`` cannot give rows in ``mode`` (``None``: it can)."""
    absent = vocabulary_size - len(img.objects)
    if not img.objects:
        return "no known objects"
    if mode == "pope" and len(img.objects) < k:
        return f"fewer than {k} objects"
    if mode == "pope" and absent < k:
        return f"fewer than {k} absent objects in the vocabulary"
    if absent < 1:
        return "no absent object in the vocabulary"
    return None


def choose_images(images: list[ImageObjects], n: int | None, seed: int, where: str) -> list[ImageObjects]:
    """``n`` of ``images`` drawn with ``seed`` (in input order), or all of them."""
    from vlmplug.errors import ConfigError

    if n is None:
        return images
    if n > len(images):
        raise ConfigError(f"{where}: only {len(images)} image(s) can give rows; lower --images (or --per-image)")
    picked = sorted(random.Random(f"vlmplug-negatives-images:{seed}").sample(range(len(images)), n))
    return [images[i] for i in picked]


def plan_pope(images: list[ImageObjects], source: Source, k: int, sampling: str, seed: int, stats: Stats) -> Plan:
    """POPE: per image ``k`` present objects (yes) and ``k`` absent ones (no), alternating."""
    plan = Plan(used=len(images))
    for img in images:
        rng = image_rng(seed, img)
        positives = draw_positives(img, k, rng)
        negatives = draw_negatives(img, k, sampling, source.vocabulary, stats, rng)
        for yes, no in zip(positives, negatives):
            plan.rows += [pope_row(img, yes, "yes", sampling), pope_row(img, no, "no", sampling)]
    return plan


def plan_negatives(
    images: list[ImageObjects], source: Source, k: int, ratio: float, sampling: str, seed: int, stats: Stats
) -> Plan:
    """Training rows: per image up to ``k`` present objects and absent ones at ``ratio`` per positive
    (counted over the whole file, so the total is ``round(ratio * positives)`` where the vocabulary allows)."""
    plan = Plan(used=len(images))
    positives_so_far = negatives_so_far = 0
    for img in images:
        rng = image_rng(seed, img)
        positives = draw_positives(img, k, rng)
        positives_so_far += len(positives)
        owed = round(ratio * positives_so_far) - negatives_so_far
        negatives = draw_negatives(img, owed, sampling, source.vocabulary, stats, rng) if owed > 0 else []
        negatives_so_far += len(negatives)
        plan.rows += [training_row(img, obj, True, sampling) for obj in positives]
        plan.rows += [training_row(img, obj, False, sampling) for obj in negatives]
    return plan


# -- the command ------------------------------------------------------------------------------------------


def check_out(out: Path, source: Path, overwrite: bool) -> None:
    from vlmplug.errors import ConfigError

    if out.suffix != ".jsonl":
        raise ConfigError(f"--out {out}: must end in .jsonl (the messages format reads JSON Lines by that suffix)")
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a .jsonl file", header="output")
    if os.path.abspath(out) == os.path.abspath(source):
        raise ConfigError(f"--out {out}: is the input file; write to another file", header="output")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out}: already there; choose another file or pass --overwrite", header="output")


def _outside(ref: str, out: Path) -> bool:
    """Whether ``ref`` lies outside ``out``'s folder (a run refuses it unless allow_paths_outside_data)."""
    relative = os.path.relpath(os.path.abspath(ref), os.path.abspath(out.parent))
    return os.path.isabs(relative) or relative.split(os.sep, 1)[0] == os.pardir


def summary(plan: Plan, source: Source, options: dict[str, Any], out: Path) -> dict[str, Any]:
    labels = Counter(r["label"] for r in plan.rows)
    used_images = {r["images"][0] for r in plan.rows}
    return {
        **options,
        "input": source.kind,
        "out": str(out),
        "images_read": len(source.images),
        "images_used": plan.used,
        "images_skipped": dict(plan.skipped),
        "bad_records": len(source.problems),
        "vocabulary": len(source.vocabulary),
        "rows": len(plan.rows),
        "yes": labels["yes"],
        "no": labels["no"],
        "missing_images": sum(1 for ref in used_images if not ref.startswith(URIS) and not os.path.exists(ref)),
        "images_outside_out_folder": sum(1 for ref in used_images if not ref.startswith(URIS) and _outside(ref, out)),
    }


def print_summary(info: dict[str, Any]) -> None:
    from rich.console import Console

    con = Console()
    say = con.print
    say(
        f"wrote {info['rows']} rows ({info['yes']} yes / {info['no']} no) to {info['out']}: --mode {info['mode']}, "
        f"--sampling {info['sampling']}, {info['images_used']} of {info['images_read']} images "
        f"({info['input']}, {info['vocabulary']} object names)",
        markup=False,
    )
    for reason, n in info["images_skipped"].items():
        say(f"  left out {n} image(s): {reason}", markup=False)
    if info["bad_records"]:
        say(f"  left out {info['bad_records']} bad record(s) (--skip-bad)", markup=False)
    if info["missing_images"]:
        say(f"note: {info['missing_images']} image file(s) not found (check --image-root)", markup=False)
    if info["images_outside_out_folder"]:
        say(
            f"note: {info['images_outside_out_folder']} image(s) lie outside the output file's folder, which a run "
            f"refuses unless the recipe sets allow_paths_outside_data: true",
            markup=False,
        )


@click.command("negatives")
@click.argument("source_file", metavar="IN", type=click.Path(dir_okay=False))
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="The .jsonl file to write.")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="pope",
    show_default=True,
    help="pope: yes/no probes for evaluation; negatives: training rows with full-sentence answers.",
)
@click.option(
    "--sampling",
    type=click.Choice(SAMPLINGS),
    default="random",
    show_default=True,
    help="How absent objects are chosen: at random, the most frequent, or those co-occurring most.",
)
@click.option(
    "--per-image", type=click.IntRange(min=1), default=3, show_default=True, help="Present objects per image."
)
@click.option("--images", "num_images", type=click.IntRange(min=1), help="Use this many images (drawn with --seed).")
@click.option(
    "--negative-ratio",
    type=click.FloatRange(min=0),
    help="--mode negatives: absent-object rows per present-object row (default 1).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random draw.")
@click.option("--image-root", help="Folder IN's image paths are relative to (default: IN's folder).")
@click.option(
    "--vocabulary",
    type=click.Path(dir_okay=False),
    help="Object names, one a line (captions: the names looked for, default COCO's 80; object lists: added).",
)
@click.option("--skip-bad", is_flag=True, help="Leave malformed records out (counted) instead of stopping.")
@click.option("--overwrite", is_flag=True, help="Replace FILE if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead.")
@handled
def negatives_cmd(
    source_file: str,
    out_file: str,
    mode: str,
    sampling: str,
    per_image: int,
    num_images: int | None,
    negative_ratio: float | None,
    seed: int,
    image_root: str | None,
    vocabulary: str | None,
    skip_bad: bool,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Write POPE probes or "object does not exist" training rows.

    IN is a COCO instances JSON (instances_val2014.json; --image-root is then COCO's image folder),
    {image, objects: [...]} records, or captions (COCO captions JSON, {image, caption(s)} records;
    objects are the vocabulary names the captions mention). FILE gets messages rows with `label`
    (yes/no), `object` and `sampling`; image paths relative to FILE's folder."""
    from vlmplug.errors import ConfigError

    if negative_ratio is not None and mode == "pope":
        raise ConfigError("--negative-ratio: POPE is balanced by design (as many no as yes); use --mode negatives")
    path, out = Path(source_file), Path(out_file)
    check_out(out, path, overwrite)
    source = read_source(path, image_root, read_vocabulary(Path(vocabulary)) if vocabulary else None)
    stop_on_problems(source, path, skip_bad)
    stats = Stats.of(source.images)
    skipped: Counter[str] = Counter()
    usable = []
    for img in source.images:
        reason = eligibility(img, mode, per_image, len(source.vocabulary))
        if reason is None:
            usable.append(img)
        else:
            skipped[reason] += 1
    chosen = choose_images(usable, num_images, seed, str(path))
    if mode == "pope":
        plan = plan_pope(chosen, source, per_image, sampling, seed, stats)
    else:
        ratio = 1.0 if negative_ratio is None else negative_ratio
        plan = plan_negatives(chosen, source, per_image, ratio, sampling, seed, stats)
    plan.skipped = skipped
    if not plan.rows:
        raise ConfigError(f"{path}: no image can give rows ({dict(skipped)}); lower --per-image or check the input")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(plan.rows, str(path), MessagesWriter(out, out.with_name(out.name + ".images")), out)
    options = {"mode": mode, "sampling": sampling, "per_image": per_image, "seed": seed}
    if mode == "negatives":
        options["negative_ratio"] = 1.0 if negative_ratio is None else negative_ratio
    info = summary(plan, source, options, out)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        print_summary(info)
