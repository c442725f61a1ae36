"""Caption records (COCO annotations JSON, or ``{image, caption(s)}`` rows) -> canonical samples.

Reading happens in three steps: every record is checked and becomes ``(key, image, captions)``
(a bad record is a :class:`~vlmplug.errors.DataError` naming the file and record, under the run's
``on_bad_sample`` policy); the captions of each image are gathered as its references; then the samples
are made, one per caption or one per image.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmplug.errors import DataError, read_text

from ._messages import _outside, _resolve, _rows

#: The placeholder the canonical samples (and the prompt templates) write.
IMAGE = "<image>"


@dataclass
class Record:
    """One checked record: where it is, its position (the prompt choice's key), its image and captions."""

    where: str
    index: int
    image: str  # resolved path or data URI
    image_id: Any
    captions: list[str]
    extra: dict[str, Any]


def image_token(ctx: Any) -> str:
    """The run's image placeholder (``image_token``; ``<image>`` unless the recipe changes it)."""
    core = getattr(getattr(ctx, "recipe", None), "core", None) or {}
    return str(core.get("image_token") or IMAGE)


def raise_or_skip(problems: list[DataError], source: Any, skip_bad: bool) -> list[DataError]:
    """The rows to report as skipped under ``on_bad_sample: skip``; else one DataError listing them."""
    if not problems or skip_bad:
        return problems
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise DataError(
        f"{len(problems)} bad record(s) in {source}{more}:\n  "
        + "\n  ".join(str(p) for p in problems[:5])
        + "\nfix the records, or set on_bad_sample: skip to skip and count them"
    )


def _caption(value: Any, label: str, where: str) -> tuple[str | None, DataError | None]:
    """The caption, stripped; or the problem, described at ``label`` and filed under the record ``where``."""
    if not isinstance(value, str):
        return None, DataError(
            f"{label}: the caption must be a string, got {value!r:.80}", reason="malformed-row", where=where
        )
    if not value.strip():
        return None, DataError(
            f"{label}: empty caption (nothing to learn from it); fill or drop it", reason="empty-caption", where=where
        )
    return value.strip(), None


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(
            f"{path}: file not found (dataset paths are relative to where you run vlmplug)", reason="missing-file"
        )
    try:
        return json.loads(read_text(path, "dataset", DataError))
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}); use a COCO captions JSON, a JSON list of "
            f"{{image, caption}} records or a .jsonl file"
        ) from e


def coco_records(data: dict[str, Any], path: Path, root: Path) -> tuple[list[Record], list[DataError]]:
    """A COCO captions file: ``images`` name the files, each annotation is one caption of one image."""
    images, annotations = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise DataError(
            f"{path}: a COCO captions file needs the lists 'images' ({{id, file_name}}) and 'annotations' "
            f"({{image_id, caption}}); got keys {sorted(data)[:8]}"
        )
    files = {
        img["id"]: img["file_name"]
        for img in images
        if isinstance(img, dict) and "id" in img and isinstance(img.get("file_name"), str)
    }
    records, problems = [], []
    for n, ann in enumerate(annotations):
        where = f"{path} annotation {n}"
        if not isinstance(ann, dict):
            problems.append(
                DataError(
                    f"{where}: expected an object {{image_id, caption}}, got {type(ann).__name__}",
                    reason="malformed-row",
                    where=where,
                )
            )
            continue
        label = f"{where} (id {ann['id']})" if "id" in ann else where
        image_id = ann.get("image_id")
        if image_id not in files:
            problems.append(
                DataError(
                    f"{label}: image_id {image_id!r} is not in 'images' (or has no file_name); "
                    f"use the annotations file that belongs to this image set",
                    reason="unknown-image",
                    where=where,
                )
            )
            continue
        caption, problem = _caption(ann.get("caption"), label, where)
        if problem is not None:
            problems.append(problem)
            continue
        assert caption is not None
        records.append(Record(where, n, _resolve(files[image_id], root), image_id, [caption], {}))
    return records, problems


def simple_records(rows: list[tuple[int, Any]], path: Path, root: Path) -> tuple[list[Record], list[DataError]]:
    """``{"image": path, "caption": str}`` or ``{"image": path, "captions": [str, ...]}`` rows."""
    records, problems = [], []
    jsonl = path.suffix == ".jsonl"
    for n, row in rows:
        where = f"{path}:{n}" if jsonl else f"{path} record {n}"
        problem = _check_row(row, where)
        if problem is not None:
            problems.append(DataError(problem, reason="malformed-row", where=where))
            continue
        raw = row["captions"] if "captions" in row else [row["caption"]]
        captions = []
        for j, value in enumerate(raw):
            caption, error = _caption(value, f"{where} captions[{j}]" if "captions" in row else where, where)
            if error is not None:
                problems.append(error)
                break
            assert caption is not None
            captions.append(caption)
        else:
            extra = {k: v for k, v in row.items() if k not in ("image", "caption", "captions", "image_id")}
            image_id = row.get("image_id", row["image"])
            records.append(Record(where, n, _resolve(row["image"], root), image_id, captions, extra))
    return records, problems


def _check_row(row: Any, where: str) -> str | None:
    if not isinstance(row, dict):
        return f"{where}: expected an object {{image, caption}}, got {type(row).__name__}"
    if not isinstance(row.get("image"), str) or not row["image"]:
        return f"{where}: 'image' must be an image path (or data URI), got {row.get('image')!r:.80}"
    if "caption" in row and "captions" in row:
        return f"{where}: give 'caption' (one string) or 'captions' (a list), not both"
    if "captions" in row:
        if not isinstance(row["captions"], list) or not row["captions"]:
            return f"{where}: 'captions' must be a non-empty list of strings"
    elif "caption" not in row:
        return f"{where}: no 'caption' (or 'captions'); each record pairs an image with its caption"
    return None


def _leaves_root(record: Record, root: Path, problems: list[DataError]) -> bool:
    """Whether the record's image lies outside the dataset folder (then a problem is filed)."""
    problem = _outside({"images": [record.image]}, root, record.where)
    if problem:
        problems.append(DataError(problem, reason="outside-data", where=record.where))
    return problem is not None


class CaptionDataset(Sequence):
    """Canonical samples from caption records: a prompt with ``<image>``, the caption as the answer."""

    def __init__(self, config: Any, skip_bad: bool = False, token: str = IMAGE, allow_outside: bool = False):
        self.path = Path(config.path)
        root = Path(config.image_root) if config.image_root else self.path.parent
        if self.path.suffix == ".jsonl":
            records, problems = simple_records(_rows(self.path), self.path, root)
        else:
            data = _load_json(self.path)
            if isinstance(data, dict):
                records, problems = coco_records(data, self.path, root)
            elif isinstance(data, list):
                records, problems = simple_records(list(enumerate(data)), self.path, root)
            else:
                raise DataError(
                    f"{self.path}: expected a COCO captions object or a list of {{image, caption}} records, "
                    f"got {type(data).__name__}"
                )
        if not allow_outside:
            records = [r for r in records if not _leaves_root(r, root, problems)]
        self.skipped: list[DataError] = raise_or_skip(problems, self.path, skip_bad)
        self.prompts = [p.replace(IMAGE, token) for p in config.prompts]
        self.seed = config.seed
        self.samples = self._samples(records, config.one_per_image)
        if config.max_samples is not None:
            self.samples = self.samples[: config.max_samples]

    def prompt(self, index: int, j: int) -> str:
        """The prompt of record ``index``'s ``j``-th caption: a pure function of the seed and position."""
        rng = random.Random(f"caption:{self.seed}:{index}:{j}")
        return self.prompts[rng.randrange(len(self.prompts))]

    def _samples(self, records: list[Record], one_per_image: bool) -> list[dict[str, Any]]:
        references: dict[str, list[str]] = {}
        for r in records:
            references.setdefault(r.image, []).extend(r.captions)
        samples = []
        seen: set[str] = set()
        for r in records:
            if one_per_image and r.image in seen:
                continue
            seen.add(r.image)
            pairs = [(0, references[r.image][0])] if one_per_image else list(enumerate(r.captions))
            for j, caption in pairs:
                where = r.where if not one_per_image else f"{self.path} image {r.image_id}"
                samples.append(
                    {
                        **r.extra,
                        "messages": [
                            {"role": "user", "content": self.prompt(r.index, j)},
                            {"role": "assistant", "content": caption},
                        ],
                        "images": [r.image],
                        "captions": list(references[r.image]),
                        "image_id": r.image_id,
                        "_where": where,
                    }
                )
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]  # no slices
        return self.samples[i]


def build(config: Any, ctx: Any) -> CaptionDataset:
    return CaptionDataset(
        config,
        skip_bad=ctx.on_bad_sample == "skip",
        token=image_token(ctx),
        allow_outside=bool(getattr(ctx, "allow_paths_outside_data", False)),
    )
