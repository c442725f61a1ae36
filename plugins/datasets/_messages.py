"""Reader for the ``messages`` format (JSON list or JSONL), validating every row up front."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlmplug.errors import DataError, read_text

ROLES = ("system", "user", "assistant")


def _rows(path: Path) -> list[tuple[int, Any]]:
    """``(line or record number, record)``; a JSONL line that is not JSON comes as a DataError in place
    of its record, so it follows the row policy (``on_bad_sample``) like any other bad row."""
    if not path.is_file():
        raise DataError(
            f"{path}: file not found (dataset paths are relative to where you run vlmplug)", reason="missing-file"
        )
    text = read_text(path, "dataset", DataError)
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                error = DataError(
                    f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object",
                    reason="malformed-row",
                    where=f"{path}:{n}",
                )
                rows.append((n, error))
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}); use a list of records or a .jsonl file"
        ) from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return [(i, row) for i, row in enumerate(data)]


def _check(row: Any, where: str) -> str | None:
    if not isinstance(row, dict):
        return f"{where}: expected an object with 'messages', got {type(row).__name__}"
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return f"{where}: 'messages' must be a non-empty list of {{role, content}}"
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"{where}: messages[{j}] must have role in {ROLES} and string content, got {m!r:.80}"
    if not any(m["role"] == "assistant" for m in msgs):
        return f"{where}: no assistant message, so there is nothing to learn"
    empty = [j for j, m in enumerate(msgs) if m["role"] == "assistant" and not m["content"].strip()]
    if empty:
        return f"{where}: messages[{empty[0]}] is an empty assistant turn (nothing to learn from it); fill or drop it"
    images = row.get("images", [])
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        return f"{where}: 'images' must be a list of paths or data URIs"
    videos = row.get("videos", [])
    if not isinstance(videos, list) or not all(_is_video(v) for v in videos):
        return (
            f"{where}: 'videos' must be a list of videos, each a video file or frame folder path, a list "
            f"of frame paths, or {{frames: [...], fps: N}}"
        )
    return None


#: Keys an image object may name its source with: ``{"path": ...}``, ``{"url": ...}`` (a data URI too),
#: ``{"image": ...}`` (Hugging Face chat parts), ``{"image_url": {"url": ...}}`` (OpenAI parts).
IMAGE_KEYS = ("path", "url", "image", "image_url")


def image_ref(entry: Any) -> str | None:
    """An ``images`` entry as a path or data URI: a string as it is; an object by its ``path`` / ``url``
    / ``image`` / ``image_url.url``, or its base64 ``bytes`` as a data URI; ``None`` when it is neither."""
    if isinstance(entry, str):
        return entry
    if not isinstance(entry, dict):
        return None
    for key in IMAGE_KEYS:
        value = entry.get(key)
        if isinstance(value, dict):
            value = value.get("url")
        if isinstance(value, str) and value:
            return value
    data = entry.get("bytes", entry.get("base64"))
    if isinstance(data, str) and data:
        return data if data.startswith("data:") else f"data:image;base64,{data}"  # PIL reads the bytes' own type
    return None


def _normalise_images(row: dict[str, Any], where: str) -> str | None:
    """Turn the row's image objects into paths / data URIs in place; a problem naming a bad entry."""
    images = row.get("images", [])
    if not isinstance(images, list):
        return None  # a single string, or not a list: left to the row check
    refs = [image_ref(entry) for entry in images]
    bad = [k for k, ref in enumerate(refs) if ref is None]
    if bad:
        return (
            f"{where}: images[{bad[0]}] must be a path, a data URI, or an object with "
            f"{' / '.join(IMAGE_KEYS)} or base64 bytes, got {images[bad[0]]!r:.80}"
        )
    row["images"] = refs
    return None


def _is_video(video: Any) -> bool:
    if isinstance(video, str):
        return True
    if isinstance(video, dict):
        video = video.get("frames")
    return isinstance(video, list) and all(isinstance(f, str) for f in video)


def _resolve(ref: str, root: Path) -> str:
    """A path relative to the data file (or ``image_root``); URIs and absolute paths as they are."""
    return ref if ref.startswith(("data:", "http://", "https://")) or Path(ref).is_absolute() else str(root / ref)


def _local_refs(sample: dict[str, Any]) -> list[str]:
    """The file paths a sample reads (images, video files, frame folders and frames; no URIs)."""
    refs: list[str] = [i for i in sample.get("images", []) if isinstance(i, str)]
    for video in sample.get("videos", []) or []:
        frames = video.get("frames") if isinstance(video, dict) else video
        refs += [frames] if isinstance(frames, str) else list(frames)
    return [r for r in refs if not r.startswith(("data:", "http://", "https://"))]


def _outside(sample: dict[str, Any], root: Path, where: str) -> str | None:
    """A problem naming the first path that leaves ``root`` (``../`` or an absolute path elsewhere)."""
    top = root.resolve()
    for ref in _local_refs(sample):
        if not Path(ref).resolve().is_relative_to(top):
            return (
                f"{where}: {ref} is outside the dataset folder {top}; move it under the folder, point "
                f"image_root at a folder that holds it, or set allow_paths_outside_data: true"
            )
    return None


def _resolve_video(video: Any, root: Path) -> Any:
    if isinstance(video, str):
        return _resolve(video, root)
    if isinstance(video, dict):
        return {**video, "frames": [_resolve(f, root) for f in video["frames"]]}
    return [_resolve(f, root) for f in video]


#: A row converter: ``(row, where) -> (canonical row, None)`` or ``(None, problem)``.
Convert = Callable[[Any, str], tuple[dict[str, Any] | None, str | None]]


def _as_is(row: Any, where: str) -> tuple[Any, str | None]:
    return row, None


class MessagesDataset(Sequence):
    """Records of a JSON / JSONL file, each turned into a canonical sample by ``convert`` (the
    ``messages`` format reads them as they are), checked up front, with paths made absolute."""

    def __init__(self, config: Any, skip_bad: bool = False, convert: Convert = _as_is, allow_outside: bool = False):
        self.skipped: list[DataError] = []  # rows dropped under on_bad_sample: skip, reported by the run
        self.path = Path(config.path)
        root = Path(config.image_root) if config.image_root else self.path.parent
        rows = _rows(self.path)
        if config.max_samples is not None:
            rows = rows[: config.max_samples]
        label = "line" if self.path.suffix == ".jsonl" else "record"
        self.samples: list[dict[str, Any]] = []
        problems = []
        for n, row in rows:
            where = f"{self.path}:{n}" if label == "line" else f"{self.path} record {n}"
            if isinstance(row, DataError):  # a line that is not JSON
                problems.append(row)
                continue
            row, problem = convert(row, where)
            if problem is None and isinstance(row, dict):
                problem = _normalise_images(row, where)
            problem = problem or _check(row, where)
            if problem:
                problems.append(DataError(problem, reason="malformed-row", where=where))
                continue
            images = row.get("images", [])
            images = [images] if isinstance(images, str) else images
            sample = {**row, "images": [_resolve(i, root) for i in images], "_where": where}
            if row.get("videos"):
                sample["videos"] = [_resolve_video(v, root) for v in row["videos"]]
            outside = None if allow_outside else _outside(sample, root, where)
            if outside:
                problems.append(DataError(outside, reason="outside-data", where=where))
                continue
            self.samples.append(sample)
        if problems and skip_bad:
            self.skipped = problems
        elif problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise DataError(
                f"{len(problems)} malformed row(s) in {self.path}{more}:\n  "
                + "\n  ".join(str(p) for p in problems[:5])
                + "\nfix the rows, or set on_bad_sample: skip to skip and count them"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i]


def build(config: Any, ctx: Any) -> MessagesDataset:
    return MessagesDataset(
        config,
        skip_bad=ctx.on_bad_sample == "skip",
        allow_outside=bool(getattr(ctx, "allow_paths_outside_data", False)),
    )
