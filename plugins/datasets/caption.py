"""``caption``: image-caption pairs for stage-1 alignment, following the COCO Captions layout
(Chen et al. 2015, "Microsoft COCO Captions: Data Collection and Evaluation Server").

Reads either a COCO annotations JSON, as ``captions_train2017.json``::

    {"images": [{"id": 391895, "file_name": "000000391895.jpg", ...}],
     "annotations": [{"id": 770337, "image_id": 391895, "caption": "A man riding a bike."}]}

with ``file_name`` relative to ``image_root`` (COCO's ``train2017`` folder; default: the JSON's
folder), or a JSON list / JSONL of simple records ``{"image": "a.jpg", "caption": "..."}`` (or
``"captions": [...]``; other fields are kept), relative to the file's folder alike.

Each caption becomes one sample (``one_per_image: true``: one per image, its first caption): the
user turn is one of ``prompts`` (each with one ``<image>``), chosen per caption from ``seed`` and the
record's position, so a run is reproducible; the assistant turn is the caption, stripped. Every
sample keeps ``captions`` (all reference captions of its image, in file order) and ``image_id`` for
caption metrics. Detected from a record with ``image`` and ``caption`` / ``captions``, and from a
``captions_*.json`` file name (COCO's); name any other COCO file with ``format: caption``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmplug import ComponentSpec, hookimpl

#: Short caption instructions (the guide's stage 1 trains a projection on brief captions).
DEFAULT_PROMPTS = [
    "<image>\nDescribe the image briefly.",
    "<image>\nWrite a short caption for this image.",
    "<image>\nWhat does this picture show? Answer in one sentence.",
    "<image>\nGive a one-sentence description of the photo.",
    "<image>\nSummarize the image in a few words.",
    "<image>\nCaption this image.",
]


@dataclass(frozen=True, kw_only=True)
class CaptionConfig:
    path: str = field(
        default="",
        metadata={"help": "A COCO captions JSON (captions_train2017.json), or JSON / JSONL {image, caption} records."},
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder the image paths are relative to, e.g. coco/train2017 (default: the file's)."},
    )
    one_per_image: bool = field(
        default=False,
        metadata={"help": "One sample per image (its first caption) instead of one per caption."},
    )
    prompts: list[str] = field(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        metadata={"help": "User-turn templates, each with exactly one <image>; one is chosen per sample."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the per-sample prompt choice."})
    max_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many samples (every record is still checked)."}
    )

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path: the caption format needs a file path")
        if not self.prompts:
            raise ValueError("prompts: give at least one prompt template")
        for i, prompt in enumerate(self.prompts):
            if not isinstance(prompt, str) or prompt.count("<image>") != 1:
                raise ValueError(
                    f"prompts[{i}]: {prompt!r} must contain exactly one <image> (where the picture goes), "
                    f'e.g. "<image>\\nDescribe the image briefly."'
                )
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError("max_samples must be positive")


SPEC = ComponentSpec(
    name="caption",
    summary="Image-caption pairs: COCO captions JSON or {image, caption(s)} records (stage-1 alignment)",
    factory="vlmplug.plugins.datasets._caption:build",
    config=CaptionConfig,
    test_options={"path": "{caption_json}"},
)


@hookimpl
def register_dataset_formats(register) -> None:
    register(SPEC)


@hookimpl(trylast=True)
def detect_dataset_format(path: str, sample: dict[str, Any] | None) -> str | None:
    """A record with ``image`` and ``caption`` / ``captions``; or a COCO ``captions_*.json`` file,
    whose first record the resolver cannot see (the file is one object, not a list)."""
    if isinstance(sample, dict):
        if "image" in sample and ("caption" in sample or "captions" in sample):
            return "caption"
        return None
    name = Path(path).name
    if name.startswith("captions_") and name.endswith(".json"):
        return "caption"
    return None
