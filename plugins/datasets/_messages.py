"""Reader for the ``messages`` format (JSON list or JSONL).

Built for a map-style run it reads and validates every row up front (bad rows follow
``on_bad_sample``). Built for streaming (``ctx.streaming``, ``streaming: true``) it only checks that
the file exists; :meth:`MessagesDataset.stream` then reads the rows lazily, in file order, each pass
anew: a JSONL file line by line (only the lines the caller keeps are parsed), a ``.json`` list whole
(a JSON document has no record boundaries to read by; convert big ones to JSONL). Both paths run the
same per-row conversion and checks, so a row is good or bad, with the same reason, either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vlmplug.errors import DataError, read_text

ROLES = ("system", "user", "assistant")


def _need_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(
            f"{path}: file not found (dataset paths are relative to where you run vlmplug)", reason="missing-file"
        )


def _jsonl_record(path: Path, n: int, line: str) -> Any:
    """Line ``n`` as a record, or a DataError in its place when it is not JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        return DataError(
            f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object",
            reason="malformed-row",
            where=f"{path}:{n}",
        )


def _json_records(path: Path, text: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}); use a list of records or a .jsonl file"
        ) from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _rows(path: Path) -> list[tuple[int, Any]]:
    """``(line or record number, record)``; a JSONL line that is not JSON comes as a DataError in place
    of its record, so it follows the row policy (``on_bad_sample``) like any other bad row."""
    _need_file(path)
    text = read_text(path, "dataset", DataError)
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            rows.append((n, _jsonl_record(path, n, line)))
        return rows
    return [(i, row) for i, row in enumerate(_json_records(path, text))]


def iter_rows(
    path: Path, keep: Callable[[int], bool] | None = None, limit: int | None = None
) -> Iterator[tuple[int, int, Any]]:
    """``(record index, line or record number, record)`` lazily, in file order, for the first ``limit``
    records; the index counts records (a JSONL file's non-blank lines) from 0. A JSONL file is read line
    by line and only the lines ``keep(index)`` wants are decoded and parsed; a line that is not JSON
    comes as a DataError in place of its record; one that is not UTF-8 stops the read (a problem of the
    whole file, as up front). A ``.json`` list is read whole. JSONL lines split at ``\\n`` only."""
    _need_file(path)
    if path.suffix != ".jsonl":
        for index, row in enumerate(_json_records(path, read_text(path, "dataset", DataError))):
            if limit is not None and index >= limit:
                return
            if keep is None or keep(index):
                yield index, index, row
        return
    index = 0
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if limit is not None and index >= limit:
                return
            if keep is None or keep(index):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}:{n}: the dataset is not UTF-8 text (byte 0x{raw[e.start]:02x}); save it as UTF-8",
                        reason="encoding",
                        where=f"{path}:{n}",
                    ) from None
                yield index, n, _jsonl_record(path, n, line)
            index += 1


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
        refs += [frames] if isinstance(frames, str) else list(frames or [])
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
    ``messages`` format reads them as they are), checked, with paths made absolute: all of them up
    front, or -- built with ``streaming=True`` -- none until :meth:`stream` reads them."""

    def __init__(
        self,
        config: Any,
        skip_bad: bool = False,
        convert: Convert = _as_is,
        allow_outside: bool = False,
        streaming: bool = False,
    ):
        self.skipped: list[DataError] = []  # rows dropped under on_bad_sample: skip, reported by the run
        self.path = Path(config.path)
        self.root = Path(config.image_root) if config.image_root else self.path.parent
        self.convert = convert
        self.allow_outside = allow_outside
        self.max_samples = config.max_samples
        #: Built for streaming: no row is read here; :meth:`stream` reads them, and there is no length.
        self.streaming = streaming
        self.samples: list[dict[str, Any]] = []
        if streaming:
            _need_file(self.path)  # a missing file stops the run before any model loads, as up front
            return
        rows = _rows(self.path)
        if config.max_samples is not None:
            rows = rows[: config.max_samples]
        problems = []
        for n, row in rows:
            got = self._sample(n, row)
            if isinstance(got, DataError):
                problems.append(got)
            else:
                self.samples.append(got)
        if problems and skip_bad:
            self.skipped = problems
        elif problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise DataError(
                f"{len(problems)} malformed row(s) in {self.path}{more}:\n  "
                + "\n  ".join(str(p) for p in problems[:5])
                + "\nfix the rows, or set on_bad_sample: skip to skip and count them"
            )

    def _sample(self, n: int, row: Any) -> dict[str, Any] | DataError:
        """Record ``n`` (line or record number) as a checked canonical sample, or the DataError naming it."""
        where = f"{self.path}:{n}" if self.path.suffix == ".jsonl" else f"{self.path} record {n}"
        if isinstance(row, DataError):  # a line that is not JSON
            return row
        row, problem = self.convert(row, where)
        if problem is None and isinstance(row, dict):
            problem = _normalise_images(row, where)
        problem = problem or _check(row, where)
        if problem:
            return DataError(problem, reason="malformed-row", where=where)
        images = row.get("images", [])
        images = [images] if isinstance(images, str) else images
        sample = {**row, "images": [_resolve(i, self.root) for i in images], "_where": where}
        if row.get("videos"):
            sample["videos"] = [_resolve_video(v, self.root) for v in row["videos"]]
        outside = None if self.allow_outside else _outside(sample, self.root, where)
        if outside:
            return DataError(outside, reason="outside-data", where=where)
        return sample

    def stream(self, keep: Callable[[int], bool] | None = None) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
        """``(record index, canonical sample or the DataError of a bad row)`` for every record, read
        lazily from the file in file order (a new read per call); records ``keep(index)`` does not want
        are not parsed. The streaming capability (:class:`vlmplug.contracts.StreamingDatasetFormat`)."""
        for index, n, row in iter_rows(self.path, keep, self.max_samples):
            yield index, self._sample(n, row)

    def __len__(self) -> int:
        if self.streaming:
            raise TypeError(f"{self.path} was opened for streaming (streaming: true): it has no length; use stream()")
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if self.streaming:
            raise TypeError(f"{self.path} was opened for streaming (streaming: true): read it with stream()")
        return self.samples[i]


def build(config: Any, ctx: Any) -> MessagesDataset:
    return MessagesDataset(
        config,
        skip_bad=ctx.on_bad_sample == "skip",
        allow_outside=bool(getattr(ctx, "allow_paths_outside_data", False)),
        streaming=bool(getattr(ctx, "streaming", False)),
    )
