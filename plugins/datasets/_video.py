"""Video QA / caption rows -> canonical samples with one ``<video>`` and ``videos: [ref]``.

Every row is checked up front (a bad one is a :class:`~vlmplug.errors.DataError` naming the file and
row, under the run's ``on_bad_sample`` policy); the video itself (file found, header, frame count) is
checked by the pipeline when it plans the sample's frames, under the same policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmplug.errors import DataError
from vlmplug.train.video import VIDEO_TOKEN

from ._caption import raise_or_skip
from ._conversations import to_messages
from ._messages import _check, _is_video, _outside, _resolve_video, _rows

#: Fields a row's video and turns are read from (the rest are kept in the sample).
CONSUMED = ("video", "question", "answer", "caption", "conversations", "messages", "system", "images")


def _text(row: dict[str, Any], key: str, where: str) -> tuple[str | None, str | None]:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        return None, f"{where}: '{key}' must be a non-empty string, got {value!r:.80}"
    return value.strip(), None


def _with_video_token(messages: list[dict[str, Any]], where: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The turns with exactly one ``<video>``: put before the first user turn's text when none has it."""
    count = sum(m["content"].count(VIDEO_TOKEN) for m in messages)
    if count > 1:
        return None, f"{where}: {count} '{VIDEO_TOKEN}' placeholders for one video; keep one"
    if count == 1:
        return messages, None
    users = [j for j, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        return None, f"{where}: no user turn to put the video in"
    out = [dict(m) for m in messages]
    out[users[0]]["content"] = f"{VIDEO_TOKEN}\n{out[users[0]]['content']}"
    return out, None


def to_sample(row: Any, where: str, prompt: str, caption_prompt: str) -> tuple[dict[str, Any] | None, str | None]:
    """One row -> ``({messages, images: [], videos: [video], ...}, None)`` or ``(None, problem)``."""
    if not isinstance(row, dict):
        return None, f"{where}: expected an object {{video, question, answer}}, got {type(row).__name__}"
    if "video" not in row:
        return None, f"{where}: no 'video' (a video file, frame folder, list of frames or {{frames, fps}})"
    if not _is_video(row["video"]):
        return None, (
            f"{where}: 'video' must be a video file or frame folder path, a list of frame paths, or "
            f"{{frames: [...], fps: N}}, got {row['video']!r:.80}"
        )
    extra = {k: v for k, v in row.items() if k not in CONSUMED}
    if "conversations" in row or "messages" in row:
        if "conversations" in row:
            converted, problem = to_messages({k: v for k, v in row.items() if k != "video"}, where)
            if problem is not None:
                return None, problem
            assert converted is not None
            messages = converted["messages"]
        else:
            messages = row["messages"]
            problem = _check({"messages": messages}, where)
            if problem is not None:
                return None, problem
        messages, problem = _with_video_token(messages, where)
        if problem is not None:
            return None, problem
        assert messages is not None
    elif "question" in row:
        question, problem = _text(row, "question", where)
        answer, problem = (None, problem) if problem else _text(row, "answer", where)
        if problem is not None:
            return None, problem
        assert question is not None and answer is not None
        user = prompt.replace("{question}", question)
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        if "caption" in row:
            extra["caption"] = row["caption"]
    elif "caption" in row:
        caption, problem = _text(row, "caption", where)
        if problem is not None:
            return None, problem
        assert caption is not None
        messages = [{"role": "user", "content": caption_prompt}, {"role": "assistant", "content": caption}]
        extra.setdefault("captions", [caption])
    else:
        return None, f"{where}: no 'question' + 'answer' or 'caption' (nor conversations / messages) for the video"
    return {**extra, "messages": messages, "images": [], "videos": [row["video"]]}, None


class VideoDataset(Sequence):
    """Canonical samples from video rows: one ``<video>`` in the user turn, the video in ``videos``."""

    def __init__(self, config: Any, skip_bad: bool = False, allow_outside: bool = False):
        self.path = Path(config.path)
        root = Path(config.video_root) if config.video_root else self.path.parent
        rows = _rows(self.path)
        if config.max_samples is not None:
            rows = rows[: config.max_samples]
        jsonl = self.path.suffix == ".jsonl"
        self.samples: list[dict[str, Any]] = []
        problems: list[DataError] = []
        for n, row in rows:
            where = f"{self.path}:{n}" if jsonl else f"{self.path} record {n}"
            if isinstance(row, DataError):  # a JSONL line that is not JSON
                problems.append(row)
                continue
            sample, problem = to_sample(row, where, config.prompt, config.caption_prompt)
            if sample is not None:
                problem = _check(sample, where)
            if problem is not None:
                problems.append(DataError(problem, reason="malformed-row", where=where))
                continue
            assert sample is not None
            sample["videos"] = [_resolve_video(v, root) for v in sample["videos"]]
            sample["_where"] = where
            outside = None if allow_outside else _outside(sample, root, where)
            if outside:
                problems.append(DataError(outside, reason="outside-data", where=where))
                continue
            self.samples.append(sample)
        self.skipped: list[DataError] = raise_or_skip(problems, self.path, skip_bad)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]  # no slices
        return self.samples[i]


def build(config: Any, ctx: Any) -> VideoDataset:
    return VideoDataset(
        config,
        skip_bad=ctx.on_bad_sample == "skip",
        allow_outside=bool(getattr(ctx, "allow_paths_outside_data", False)),
    )
