"""``video``: video question answering and captioning rows, in the simple layout of video-QA sets
such as MSVD-QA / MSRVTT-QA (Xu et al. 2017, "Video Question Answering via Gradually Refined
Attention over Appearance and Motion") and of video captions (MSVD, ActivityNet Captions), as the
guide's video recipe trains on. JSON list or JSONL of::

    {"video": "clips/v1.mp4", "question": "What is the man doing?", "answer": "cooking"}
    {"video": ["f0.jpg", "f1.jpg", ...], "caption": "A man slices onions."}
    {"video": {"frames": ["f0.jpg", ...], "fps": 30}, "question": "...", "answer": "..."}

``video`` is a video file (decoded with PyAV), a folder of frames, a list of frame paths or
``{frames, fps}``, relative to the file's folder (or ``video_root``). A QA row's user turn is
``prompt`` with its question, a caption row's ``caption_prompt``; each holds one ``<video>``. Rows in
the Video-LLaVA / Video-ChatGPT layout (``video`` + ``conversations`` of ``from`` / ``value``, or
``messages``) are read too (a ``<video>`` is put before the first user turn's text when it has none).
Other fields are kept. Which frames a model sees is the run's ``max_num_frames`` /
``frame_sampling``, not the format's. Detected from a record with ``video`` and ``question`` or
``caption``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmplug import ComponentSpec, hookimpl

#: The placeholder of a video in message text (vlmplug.train.video.VIDEO_TOKEN; spelled out here so
#: the light module does not import the training package).
VIDEO = "<video>"


@dataclass(frozen=True, kw_only=True)
class VideoConfig:
    path: str = field(
        default="", metadata={"help": "A JSON list or JSONL of {video, question, answer} / {video, caption} rows."}
    )
    video_root: str | None = field(
        default=None, metadata={"help": "Folder the video and frame paths are relative to (default: the file's)."}
    )
    prompt: str = field(
        default=VIDEO + "\n{question}",
        metadata={"help": "User-turn template of QA rows: one <video> and {question}."},
    )
    caption_prompt: str = field(
        default=VIDEO + "\nDescribe what happens in the video.",
        metadata={"help": "User turn of caption rows (one <video>)."},
    )
    max_samples: int | None = field(default=None, metadata={"help": "Read at most this many records."})

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path: the video format needs a file path")
        if self.prompt.count(VIDEO) != 1 or "{question}" not in self.prompt:
            raise ValueError(
                f"prompt: {self.prompt!r} must contain exactly one {VIDEO} and {{question}}, "
                f'e.g. "{VIDEO}\\n{{question}}"'
            )
        if self.caption_prompt.count(VIDEO) != 1:
            raise ValueError(f"caption_prompt: {self.caption_prompt!r} must contain exactly one {VIDEO}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError("max_samples must be positive")


SPEC = ComponentSpec(
    name="video",
    summary="Video QA / caption rows: {video: file | frames, question, answer} or {video, caption}",
    factory="vlmplug.plugins.datasets._video:build",
    config=VideoConfig,
    test_options={"path": "{video_jsonl}"},
)


@hookimpl
def register_dataset_formats(register) -> None:
    register(SPEC)


@hookimpl(trylast=True)
def detect_dataset_format(path: str, sample: dict[str, Any] | None) -> str | None:
    """A record with ``video`` and ``question`` or ``caption``."""
    if isinstance(sample, dict) and "video" in sample and ("question" in sample or "caption" in sample):
        return "video"
    return None
