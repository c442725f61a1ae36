"""``vlmplug data``: make, convert and check datasets without training.

* ``data shapes`` writes the synthetic shapes task (the ``shapes`` component's own generator) as a
  ``messages`` JSONL file with PNG images;
* ``data convert`` reads a dataset with any installed dataset format and writes canonical
  ``messages`` JSONL (image paths portable, in-memory images saved as PNG files);
* ``data check`` reads a dataset as a run would -- every bad row collected, as under
  ``on_bad_sample: skip`` -- opens every image with the pipeline's own checks, counts placeholder
  mismatches and, with ``--recipe``, the token length of every sample (image tokens counted).

Light at import (click only, like :mod:`vlmplug.cli`, which registers :data:`data`): torch and the
data pipeline load inside the commands.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

import click

__all__ = ["data", "MessagesWriter", "CheckReport"]

#: The PNG files this module writes: ``NNNNNN.png`` for a row's first image, ``NNNNNN-K.png`` after.
IMAGE_FILE = re.compile(r"\d{6,}(-\d+)?\.png")
#: Image references written as they are (portable already, or not a local file).
URI_PREFIXES = ("data:", "http://", "https://")
#: ``DataError.reason`` of an image check -> its count in ``data check``'s report.
IMAGE_STATUS = {"missing-image": "missing", "unreadable-image": "corrupt"}
#: The image counts of ``data check``'s report.
IMAGE_COUNTS = ("ok", "missing", "corrupt", "unusable")
HISTOGRAM_BINS = 10
FIRST_WHERES = 3  # rows named per reason in the rich report


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`vlmplug.cli.handle_errors`, looked up when the command runs (vlmplug.cli imports this
    module, so it cannot be imported here at the top)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .cli import handle_errors

        return handle_errors(fn)(*args, **kwargs)

    return wrapper


@click.group(name="data")
def data() -> None:
    """Make, convert and check datasets (nothing trains)."""


# -- shared: formats, contexts, progress ---------------------------------------------------------------


def _host() -> Any:
    from .cli import _host as host

    return host()


def _console(stderr: bool = False) -> Any:
    from .cli import _console as console

    return console(stderr=stderr)


def format_spec(host: Any, name: str, where: str) -> Any:
    """The dataset-format component ``name``; a ConfigError with a did-you-mean otherwise."""
    from .errors import ConfigError
    from .recipe import _Resolver

    spec = host.registry.get(name)
    if spec is None or spec.family != "dataset_format":
        problem = _Resolver(host.registry, host).unknown_name(name, "dataset_format", where)
        raise ConfigError(problem, header="unknown dataset format")
    return spec


def _first_record(path: Path) -> dict[str, Any] | None:
    """The first record of a JSON list or JSONL file that parses (for format detection); ``None`` for
    anything else (a folder, a hub id, another file type)."""
    if not (path.is_file() and path.suffix in (".json", ".jsonl")):
        return None
    try:
        if path.suffix == ".jsonl":
            first = _first_json_line(path)
        else:
            records = json.loads(path.read_text(encoding="utf-8"))
            first = records[0] if isinstance(records, list) and records else None
    except (OSError, ValueError):
        return None
    return first if isinstance(first, dict) else None


def _first_json_line(path: Path) -> Any:
    """The first line of a JSONL file that parses, decoded (``None`` when none does)."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                return json.loads(line)
            except ValueError:  # blank or malformed: data check reports those
                continue
    return None


def _detect_format(host: Any, dataset: str, flag: str) -> str:
    """The format the installed plugins recognise ``dataset`` as (from its first record, like a
    recipe's ``datasets: [{path: ...}]``)."""
    from .errors import ConfigError

    formats = ", ".join(host.registry.names("dataset_format"))
    if not Path(dataset).exists():
        raise ConfigError(
            f"{dataset}: no such file or folder (paths are relative to where you run vlmplug); a format that "
            f"reads other sources needs {flag} ({formats})",
            header="dataset",
        )
    name = host.detect_dataset_format(path=dataset, sample=_first_record(Path(dataset)))
    if name is None:
        raise ConfigError(
            f"{dataset}: no dataset format recognises it; name one with {flag} ({formats})", header="format"
        )
    return str(name)


def read_context(on_bad_sample: str, recipe: Any = None) -> Any:
    """The BuildContext a dataset format's factory gets: a run's of ``recipe`` (its data settings
    apply), or a minimal one with the defaults (CPU, no recipe)."""
    import dataclasses

    from .train.assemble import DTYPES, BuildContext
    from .train.hardware import Hardware

    if recipe is not None:
        from .train.run import _context

        return dataclasses.replace(_context(recipe), on_bad_sample=on_bad_sample)
    return BuildContext(
        recipe=None,
        torch_dtype=DTYPES["float32"],
        hub_kwargs={},
        on_bad_sample=on_bad_sample,
        hardware=Hardware(False, "cpu", False, False),
    )


def build_format(spec: Any, options: dict[str, Any], ctx: Any, where: str) -> Any:
    """Build the format's dataset from ``options`` (validated like a recipe's) with ``ctx``, as a run does."""
    from .errors import ConfigError
    from .recipe import Selection
    from .registry import validate_options
    from .train.assemble import build_component

    opts, problems = validate_options(spec, options, where)
    if problems:
        raise ConfigError(problems, header=f"format '{spec.name}' cannot read this")
    return build_component(Selection(spec=spec, options=opts), ctx)


def _file_options(path: str, image_root: str | None, sets: tuple[str, ...]) -> dict[str, Any]:
    """A format's options for reading ``path``: ``--set OPTION=VALUE`` items, ``path``, ``image_root``."""
    from .recipe import parse_set

    return {**dict(parse_set(sets)), "path": path, **({"image_root": image_root} if image_root else {})}


def _where(sample: dict[str, Any], index: int, label: str) -> str:
    """The row a sample came from (the format's ``_where``), else its index."""
    return str(sample.get("_where") or f"{label} sample {index}")


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[], None]]:
    """A transient progress bar on stderr when it is a terminal (nothing is left behind)."""
    from rich.progress import Progress

    console = _console(stderr=True)
    if not console.is_terminal:
        yield lambda: None
        return
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


# -- writing messages JSONL -------------------------------------------------------------------------------


class MessagesWriter:
    """Canonical samples -> ``messages`` records for a JSONL file at ``out_file``.

    Image (and video) paths are written relative to the file's folder (absolute where no relative
    path exists); ``data:`` URIs and URLs stay as they are; in-memory images (bytes, PIL) are decoded
    as the pipeline decodes them (RGB) and saved as ``image_dir/NNNNNN.png`` (``NNNNNN-K.png`` for a
    row's later images). Every other field is kept; ``_where`` (the reader's row label) is dropped."""

    def __init__(self, out_file: Path, image_dir: Path):
        self.folder = os.path.abspath(out_file.parent)
        self.image_dir = image_dir
        self.saved = 0  # in-memory images written as PNG
        self.outside = 0  # paths written that lead out of the output folder

    def record(self, sample: dict[str, Any], index: int, where: str) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": sample["messages"]}
        out["images"] = [self._image(ref, index, k, where) for k, ref in enumerate(sample.get("images") or [])]
        if sample.get("videos"):
            out["videos"] = [self._video(video, where) for video in sample["videos"]]
        out.update({k: v for k, v in sample.items() if k not in ("messages", "images", "videos", "_where")})
        return out

    def path(self, ref: str) -> str:
        """``ref`` relative to the output folder (URIs unchanged; absolute when no relative path exists)."""
        if ref.startswith(URI_PREFIXES):
            return ref
        absolute = os.path.abspath(ref)
        try:
            relative = os.path.relpath(absolute, self.folder)
        except ValueError:  # another drive (Windows)
            relative = absolute
        if os.path.isabs(relative) or relative.split(os.sep, 1)[0] == os.pardir:
            self.outside += 1
        return relative

    def _image(self, ref: Any, index: int, k: int, where: str) -> str:
        if isinstance(ref, str):
            return self.path(ref)
        from .train.data import load_image

        image = load_image(ref, where)  # bytes / PIL -> RGB, or a DataError naming the row
        self.image_dir.mkdir(parents=True, exist_ok=True)
        target = self.image_dir / (f"{index:06d}.png" if k == 0 else f"{index:06d}-{k}.png")
        image.save(target, format="PNG")
        self.saved += 1
        return self.path(str(target))

    def _video(self, video: Any, where: str) -> Any:
        if isinstance(video, str):
            return self.path(video)
        if isinstance(video, dict) and isinstance(video.get("frames"), list):
            return {**video, "frames": [self._frame(f, where) for f in video["frames"]]}
        if isinstance(video, list):
            return [self._frame(f, where) for f in video]
        return self._frame(video, where)

    def _frame(self, frame: Any, where: str) -> str:
        if isinstance(frame, str):
            return self.path(frame)
        from .errors import DataError

        raise DataError(
            f"{where}: a video frame of type {type(frame).__name__}; data convert writes videos given as file, "
            f"folder or frame paths only",
            reason="malformed-row",
            where=where,
        )


def write_jsonl(samples: Sequence[dict[str, Any]], label: str, writer: MessagesWriter, out_file: Path) -> int:
    """Write every sample as one JSON line, atomically (a ``.partial`` file renamed when complete)."""
    from .errors import DataError

    partial = out_file.with_name(f".{out_file.name}.partial")
    try:
        with partial.open("w", encoding="utf-8") as fh, _progress(f"writing {out_file.name}", len(samples)) as tick:
            for i in range(len(samples)):
                sample = samples[i]
                where = _where(sample, i, label)
                try:
                    line = json.dumps(writer.record(sample, i, where), ensure_ascii=False)
                except TypeError as e:
                    raise DataError(
                        f"{where}: a field is not JSON ({e}); data convert writes JSON values only"
                    ) from None
                fh.write(line + "\n")
                tick()
        os.replace(partial, out_file)
    finally:
        partial.unlink(missing_ok=True)
    return len(samples)


def clear_images(folder: Path) -> None:
    """Remove the PNG files an earlier run of these commands wrote into ``folder`` (nothing else)."""
    if folder.is_dir():
        for item in folder.iterdir():
            if IMAGE_FILE.fullmatch(item.name) and item.is_file():
                item.unlink()


# -- data convert -----------------------------------------------------------------------------------------


def _convert_target(source: str, out: Path, overwrite: bool) -> Path:
    """Check that the output file may be written; return its image folder (``FILE.images``)."""
    from .errors import ConfigError

    if out.suffix != ".jsonl":
        raise ConfigError(f"--out {out}: must end in .jsonl (the messages format reads JSON Lines by that suffix)")
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a .jsonl file", header="output")
    if Path(source).exists() and os.path.abspath(source) == os.path.abspath(out):
        raise ConfigError(f"--out {out}: is the input file; write to another file", header="output")
    image_dir = out.with_name(out.name + ".images")
    taken = [p for p in (out, image_dir) if p.exists()]
    if taken and not overwrite:
        raise ConfigError(
            f"--out {out}: already there ({', '.join(map(str, taken))}); choose another file or pass --overwrite",
            header="output",
        )
    return image_dir


def _read_for_convert(spec: Any, options: dict[str, Any], skip_bad: bool) -> Any:
    """The dataset to convert; a bad row's error says how convert deals with it."""
    from .errors import DataError

    try:
        return build_format(spec, options, read_context("skip" if skip_bad else "error"), f"--from {spec.name}")
    except DataError as e:
        raise DataError(
            f"{e}\n(data convert: pass --skip-bad to leave bad rows out, or list them all with "
            f"`vlmplug data check {options['path']}`)",
            reason=e.reason,
            where=e.where,
        ) from None


_format_set_opt = click.option(
    "--set",
    "-s",
    "sets",
    multiple=True,
    metavar="OPTION=VALUE",
    help="Another option of the format, e.g. split=validation (see `vlmplug info FORMAT`; repeatable).",
)


@data.command("convert")
@click.argument("source", metavar="IN")
@click.option("--from", "from_format", help="IN's dataset format (default: detected from its first record).")
@click.option("--to", "to_format", default="messages", show_default=True, help="Output format (messages only).")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="The .jsonl file to write.")
@click.option("--image-root", help="Folder IN's image paths are relative to (default: IN's folder).")
@_format_set_opt
@click.option("--skip-bad", is_flag=True, help="Leave malformed rows out (counted) instead of stopping.")
@click.option("--overwrite", is_flag=True, help="Replace FILE (and FILE.images/) if they exist.")
@handled
def convert_cmd(
    source: str,
    from_format: str | None,
    to_format: str,
    out_file: str,
    image_root: str | None,
    sets: tuple[str, ...],
    skip_bad: bool,
    overwrite: bool,
) -> None:
    """Convert a dataset to messages JSONL.

    Reads IN with a dataset format (any installed one) and writes canonical messages JSONL to FILE:
    image paths relative to FILE's folder, in-memory images saved as FILE.images/NNNNNN.png, extra
    fields kept. A malformed row stops it (--skip-bad leaves such rows out)."""
    from .errors import ConfigError

    if to_format != "messages":
        raise ConfigError(
            f"--to {to_format}: data convert writes only the 'messages' format for now (every format reads "
            f"into it, and a recipe trains on it with datasets: [{{path: FILE}}])",
            header="output format",
        )
    host = _host()
    name = from_format or _detect_format(host, source, "--from")
    spec = format_spec(host, name, "--from")
    out = Path(out_file)
    image_dir = _convert_target(source, out, overwrite)
    samples = _read_for_convert(spec, _file_options(source, image_root, sets), skip_bad)
    clear_images(image_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = MessagesWriter(out, image_dir)
    n = write_jsonl(samples, source, writer, out)
    con = _console()
    saved = f"; {writer.saved} in-memory images saved in {image_dir}" if writer.saved else ""
    con.print(f"converted {n} rows of {source} ({name}) -> {out}{saved}", markup=False)
    if writer.outside:
        con.print(
            f"note: {writer.outside} image/video path(s) in {out} lead outside its folder, which a run refuses "
            f"unless the recipe sets allow_paths_outside_data: true; or write {out.name} in a folder that "
            f"holds the images",
            markup=False,
        )
    skipped = list(getattr(samples, "skipped", []))
    if skipped:
        from rich.markup import escape

        con.print(f"[yellow]left out {len(skipped)} bad row(s)[/] (--skip-bad):")
        for e in skipped[:5]:
            con.print(f"  {escape(str(e))}")


# -- data check -------------------------------------------------------------------------------------------


@dataclass
class CheckReport:
    """What ``data check`` found: one entry per problem (``where``, ``reason``, ``message``) and counts."""

    dataset: str
    format: str
    detected: bool
    rows: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)
    images: Counter[str] = field(default_factory=Counter)
    placeholder_mismatches: int = 0
    lengths: dict[str, Any] | None = None

    def add(self, error: Any) -> None:
        where = getattr(error, "where", None) or self.dataset
        self.problems.append({"where": where, "reason": getattr(error, "reason", "bad-sample"), "message": str(error)})

    def good_rows(self) -> int:
        bad = {p["where"] for p in self.problems if p["where"] != self.dataset}
        return self.rows - len(bad)

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(p["reason"] for p in self.problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "format": self.format,
            "format_detected": self.detected,
            "rows": self.rows,
            "good_rows": self.good_rows(),
            "problems": len(self.problems),
            "by_reason": self.by_reason(),
            "images": {"total": sum(self.images.values()), **{k: self.images[k] for k in IMAGE_COUNTS}},
            "placeholder_mismatches": self.placeholder_mismatches,
            "lengths": self.lengths,
            "bad_rows": list(self.problems),
            "ok": not self.problems,
        }


def _read_rows(spec: Any, options: dict[str, Any], ctx: Any, report: CheckReport) -> list[tuple[str, Any]]:
    """Read the dataset of ``options`` with ``ctx`` (whose ``on_bad_sample`` is ``skip``), every bad row
    collected into ``report``; the good rows as ``(where, sample)``."""
    dataset = str(options["path"])
    samples = build_format(spec, options, ctx, f"--format {spec.name}")
    rows = [(_where(samples[i], i, dataset), samples[i]) for i in range(len(samples))]
    for e in getattr(samples, "skipped", []):
        report.add(e)
    report.rows = len(rows) + len(report.problems)
    if not report.rows:
        from .errors import DataError

        report.add(DataError(f"{dataset}: no rows; a run needs at least one sample", reason="empty"))
    return rows


def _check_images(rows: list[tuple[str, Any]], report: CheckReport) -> None:
    """Open every image as the pipeline does (header check, then a full decode) and count the outcomes."""
    from .errors import DataError
    from .train.data import check_image, load_image

    total = sum(len(sample.get("images") or []) for _, sample in rows)
    with _progress("opening images", total) as tick:
        for where, sample in rows:
            for ref in sample.get("images") or []:
                try:
                    check_image(ref, where)
                    load_image(ref, where)
                except DataError as e:
                    report.images[IMAGE_STATUS.get(e.reason, "unusable")] += 1
                    report.add(e)
                else:
                    report.images["ok"] += 1
                tick()


def _check_placeholders(rows: list[tuple[str, Any]], image_token: str, report: CheckReport) -> list[tuple[str, Any]]:
    """Rows whose ``image_token`` / ``<video>`` counts in the text equal their images / videos (the
    others are reported as the pipeline words them)."""
    from .errors import DataError
    from .train.video import VIDEO_TOKEN

    consistent = []
    for where, sample in rows:
        problem = None
        for token, key in ((image_token, "images"), (VIDEO_TOKEN, "videos")):
            n = sum(m["content"].count(token) for m in sample["messages"])
            refs = len(sample.get(key) or [])
            if n != refs and problem is None:
                kind = key[:-1]
                problem = DataError(
                    f"{where}: {n} '{token}' placeholder(s) in the text but {refs} {kind}(s); put one '{token}' "
                    f"in a message for each {kind}",
                    reason=f"{kind}-count",
                    where=where,
                )
        if problem is None:
            consistent.append((where, sample))
        else:
            report.placeholder_mismatches += 1
            report.add(problem)
    return consistent


def _check_recipe(host: Any, recipe: str, spec: Any, options: dict[str, Any], max_seq_length: int | None) -> Any:
    """``recipe`` resolved to train on the checked dataset alone (``spec`` with ``options``; the
    recipe's own datasets and evaluation left out)."""
    from .errors import ConfigError
    from .recipe import load_recipe, resolve
    from .stages import is_multistage

    data, source = load_recipe(recipe)
    if is_multistage(data):
        raise ConfigError(
            f"--recipe {recipe}: has stages; check against one stage's recipe (each stage reads its own data)",
            header="recipe",
        )
    entry = {"format": spec.name, **options}
    data = {**data, "datasets": [entry], "eval_datasets": [], "evaluators": []}
    sets = [("max_seq_length", max_seq_length)] if max_seq_length else []
    return resolve(data, host.registry, host=host, sets=sets, source=source)


def _recipe_encoder(resolved: Any, host: Any, texts_from: Any) -> Any:
    """The run's :class:`~vlmplug.train.data.SampleEncoder` for ``resolved``: its tokenizer (a preset
    LLM's BPE trained on ``texts_from``, as a run trains it on its data) and the image token budget of
    its model, assembled without PEFT (a pretrained vlmplug model is loaded)."""
    import tempfile

    from .train import run as pipeline

    with tempfile.TemporaryDirectory(prefix="vlmplug-check-") as tmp:
        session = pipeline._QuietSession(Path(tmp))
        ctx = pipeline._context(resolved)
        pretrained = pipeline._pretrained_dir(resolved, ctx, session, host)  # type: ignore[arg-type]
        data = pipeline.Data(train=texts_from, eval_sets=[])
        tokenizer = pipeline._tokenizer(resolved, data, ctx, session, pretrained)  # type: ignore[arg-type]
        vlm = _budget_model(resolved, ctx, tokenizer, pretrained, host)
        return pipeline.sample_encoder(resolved, vlm, tokenizer)


def _budget_model(resolved: Any, ctx: Any, tokenizer: Any, pretrained: Path | None, host: Any) -> Any:
    """The model whose ``tokens_per_image`` the run would use."""
    if pretrained is not None:
        from .train.model_io import load

        return load(pretrained, host=host)
    from .train.assemble import assemble_model, build_component

    fusion = build_component(resolved.single["fusion"], ctx)
    return assemble_model(
        single=resolved.single, fusion=fusion, tokenizer=tokenizer, core=resolved.core, ctx=ctx, load_kwargs={}
    )


def _measure_lengths(
    rows: list[tuple[str, Any]], encoder: Any, limit: int, report: CheckReport, on_overlength: str
) -> dict[str, Any]:
    """Every row's full token length (image tokens counted). Rows over ``limit`` are listed; they are
    problems only where the recipe stops on them (``on_overlength: error``) -- otherwise a run cuts or
    skips them, as ``overlength_action`` says."""
    from .errors import DataError

    encoder.max_seq_length = sys.maxsize  # measure whole samples; the limit is compared here
    lengths: list[dict[str, Any]] = []
    with _progress("tokenizing", len(rows)) as tick:
        for where, sample in rows:
            tick()
            try:
                ids, _, slots = encoder.encode(sample, where)
            except DataError as e:
                report.add(e)
                continue
            lengths.append({"where": where, "tokens": len(ids)})
            if len(ids) > limit and on_overlength == "error":
                report.add(
                    DataError(
                        f"{where}: {len(ids)} tokens ({len(slots)} image(s) x {encoder.tokens_per_image}) exceed "
                        f"max_seq_length {limit}; raise max_seq_length or shorten the row",
                        reason="too-long",
                        where=where,
                    )
                )
    counts = [r["tokens"] for r in lengths]
    return {
        "tokens_per_image": encoder.tokens_per_image,
        "max_seq_length": limit,
        "count": len(counts),
        "min": min(counts, default=None),
        "max": max(counts, default=None),
        "mean": round(sum(counts) / len(counts), 2) if counts else None,
        "over_length": sum(1 for n in counts if n > limit),
        "over_length_rows": [r["where"] for r in lengths if r["tokens"] > limit],
        "overlength_action": on_overlength,
        "histogram": histogram(counts),
        "rows": lengths,
    }


def histogram(values: list[int], bins: int = HISTOGRAM_BINS) -> list[dict[str, int]]:
    """At most ``bins`` equal integer ranges from the smallest to the largest value: ``{from, to, count}``
    (both ends included)."""
    if not values:
        return []
    low, high = min(values), max(values)
    width = -(-(high - low + 1) // bins)  # ceil
    out = [{"from": low + i * width, "to": low + (i + 1) * width - 1, "count": 0} for i in range(bins)]
    for v in values:
        out[(v - low) // width]["count"] += 1
    return [b for b in out if b["from"] <= high]


def _print_report(report: CheckReport, recipe: str | None) -> None:
    from rich.markup import escape
    from rich.table import Table

    con = _console()
    how = "detected" if report.detected else "--format"
    con.print(f"[bold]data check[/] {escape(report.dataset)} (format {report.format}, {how})")
    good = report.good_rows()
    con.print(f"rows: {report.rows}, {good} good, {report.rows - good} with problems")
    img = report.to_dict()["images"]
    con.print(
        f"images: {img['total']}: {img['ok']} ok, {img['missing']} missing, {img['corrupt']} corrupt"
        + (f", {img['unusable']} unusable" if img["unusable"] else "")
    )
    con.print(f"placeholder mismatches: {report.placeholder_mismatches}")
    if report.problems:
        table = Table(title="problems by reason")
        for col in ("reason", "count", "first rows", "first message"):
            table.add_column(col, overflow="fold")
        for reason, count in report.by_reason().items():
            rows = [p for p in report.problems if p["reason"] == reason]
            wheres = ", ".join(p["where"] for p in rows[:FIRST_WHERES]) + (" ..." if len(rows) > FIRST_WHERES else "")
            table.add_row(escape(reason), str(count), escape(wheres), escape(rows[0]["message"]))
        con.print(table)
    if report.lengths is not None:
        _print_lengths(report.lengths, recipe)
    if report.problems:
        con.print(f"[red]{len(report.problems)} problem(s)[/] (all listed with --json)")
    else:
        con.print("[green]no problems[/]")


def _print_lengths(lengths: dict[str, Any], recipe: str | None) -> None:
    from rich.markup import escape

    con = _console()
    con.print(
        f"token lengths ({escape(str(recipe))}: {lengths['tokens_per_image']} tokens per image), "
        f"{lengths['count']} rows: min {lengths['min']}, mean {lengths['mean']}, max {lengths['max']}"
    )
    peak = max((b["count"] for b in lengths["histogram"]), default=0)
    for b in lengths["histogram"]:
        bar = "#" * round(40 * b["count"] / peak) if peak else ""
        con.print(f"  {b['from']:>7}-{b['to']:<7} {bar:<40} {b['count']}")
    over = lengths["over_length"]
    what = {"truncate-text": "a run cuts them", "skip": "a run skips them", "error": "a run stops on them"}
    action = f" ({what.get(lengths['overlength_action'], '')}: on_overlength {lengths['overlength_action']})"
    con.print(f"over max_seq_length {lengths['max_seq_length']}: {over}{action if over else ''}")


@data.command("check")
@click.argument("dataset")
@click.option("--format", "fmt", help="DATASET's dataset format (default: detected from its first record).")
@click.option("--image-root", help="Folder DATASET's image paths are relative to (default: its folder).")
@_format_set_opt
@click.option("--recipe", help="Also count token lengths with this recipe's tokenizer and image token budget.")
@click.option("--max-seq-length", type=click.IntRange(min=1), help="Length limit (default: the recipe's).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: the counts and every bad row.")
@handled
def check_cmd(
    dataset: str,
    fmt: str | None,
    image_root: str | None,
    sets: tuple[str, ...],
    recipe: str | None,
    max_seq_length: int | None,
    as_json: bool,
) -> None:
    """Validate a dataset without training.

    Reads DATASET as a run would and reports every malformed row, every image opened (ok / missing /
    corrupt), <image> placeholder mismatches and, with --recipe, token lengths (a histogram and the
    rows over max_seq_length).

    Exit status: 0 no problem, 1 problems found (or DATASET unreadable), 2 a usage problem (unknown
    format, bad recipe)."""
    from .errors import ConfigError
    from .keys import CORE_KEYS

    if max_seq_length is not None and recipe is None:
        raise ConfigError(
            "--max-seq-length needs --recipe (token lengths need the recipe's tokenizer and image token budget)",
            header="options",
        )
    host = _host()
    spec = format_spec(host, fmt or _detect_format(host, dataset, "--format"), "--format")
    options = _file_options(dataset, image_root, sets)
    resolved = _check_recipe(host, recipe, spec, options, max_seq_length) if recipe else None
    report = CheckReport(dataset=dataset, format=spec.name, detected=fmt is None)
    rows = _read_rows(spec, options, read_context("skip", resolved), report)
    _check_images(rows, report)
    image_token = resolved.core["image_token"] if resolved else CORE_KEYS["image_token"][1]
    consistent = _check_placeholders(rows, image_token, report)
    if resolved is not None and consistent:
        encoder = _recipe_encoder(resolved, host, [sample for _, sample in rows])
        report.lengths = _measure_lengths(
            consistent, encoder, int(resolved.core["max_seq_length"]), report, str(resolved.core["on_overlength"])
        )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        _print_report(report, recipe)
    if report.problems:
        click.get_current_context().exit(1)
