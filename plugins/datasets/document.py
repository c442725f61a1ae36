"""``document``: document VQA in the layout of DocVQA (Mathew et al. 2021, "DocVQA: A Dataset for
VQA on Document Images") -- the official ``train_v1.0.json`` ``{"data": [{"questionId", "question",
"image": "documents/xnbl0037_1.png", "answers": [...], "question_types", ...}]}`` or JSON / JSONL
rows ``{"image", "question", "answers": [...]}`` (or one ``answer``), with ``image`` relative to the
file's folder (or ``image_root``).

Each question becomes one sample: ``prompt`` with the question, then the first answer; ``answers``
(all of them, for ANLS), ``question_id`` and the other fields are kept. The guide's document
recipe's augmentations (``augmentation: true``, or its list form ``[{rotation: [-5, 5]},
{perspective: 0.1}, {jpeg_quality: [80, 100]}]``) are applied to training images when they are
read: a small rotation on white, a perspective warp from jittered corners, and JPEG re-encoding at a
random quality (the scanned-page augmentations of Donut, Kim et al. 2022), drawn from ``seed`` and
the sample's index, so every epoch and every run sees the same pixels. A dataset under
``eval_datasets:`` is never augmented. Detected from a record with ``image``, ``question`` and
``answers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmplug import ComponentSpec, hookimpl

DEFAULT_PROMPT = "<image>\n{question}\nAnswer the question using a single word or phrase."
#: The guide's spellings in ``augmentation: [{rotation: ...}, {perspective: ...}, {jpeg_quality: ...}]``.
GUIDE_KEYS = ("rotation", "perspective", "jpeg_quality")


@dataclass(frozen=True)
class Augment:
    """Resolved augmentation settings: rotation range (degrees), corner jitter, JPEG quality range."""

    rotation: tuple[float, float]
    perspective: float
    jpeg_quality: tuple[int, int]


def _pair(value: Any, key: str, kind: type) -> tuple[Any, Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "rotation":
        return (-kind(value), kind(value))
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        lo, hi = kind(value[0]), kind(value[1])
        if lo <= hi:
            return lo, hi
    raise ValueError(f"augmentation: {key}: expected [low, high], got {value!r}")


@dataclass(frozen=True, kw_only=True)
class DocumentConfig:
    path: str = field(
        default="",
        metadata={"help": "DocVQA's train_v1.0.json ({data: [...]}), or JSON / JSONL {image, question, answers} rows."},
    )
    image_root: str | None = field(
        default=None, metadata={"help": "Folder the image paths are relative to (default: the file's)."}
    )
    prompt: str = field(
        default=DEFAULT_PROMPT, metadata={"help": "User-turn template with one <image> and {question}."}
    )
    augmentation: bool | list[dict[str, Any]] = field(
        default=False,
        metadata={
            "help": "Augment training images (rotation, perspective, JPEG): true, or the guide's list "
            "[{rotation: [-5, 5]}, {perspective: 0.1}, {jpeg_quality: [80, 100]}]."
        },
    )
    rotation_degrees: float = field(default=3.0, metadata={"help": "Rotate by up to this many degrees either way."})
    perspective: float = field(
        default=0.05,
        metadata={"help": "Perspective distortion scale: corners move by up to this share of half the side."},
    )
    jpeg_quality: list[int] = field(
        default_factory=lambda: [60, 95], metadata={"help": "JPEG re-encoding quality range [low, high]."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the augmentations (with each sample's index)."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep at most this many samples."})

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path: the document format needs a file path")
        if self.prompt.count("<image>") != 1 or "{question}" not in self.prompt:
            raise ValueError(
                f"prompt: {self.prompt!r} must contain exactly one <image> and {{question}}, "
                f'e.g. "<image>\\n{{question}}"'
            )
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError("max_samples must be positive")
        self.augment()  # the settings check out

    def augment(self) -> Augment | None:
        """The augmentation settings, or None when it is off (the guide's list overrides the options)."""
        if self.augmentation is False:
            return None
        rotation: tuple[float, float] = (-float(self.rotation_degrees), float(self.rotation_degrees))
        perspective = float(self.perspective)
        quality: tuple[int, int] = _pair(self.jpeg_quality, "jpeg_quality", int)
        if isinstance(self.augmentation, list):
            for item in self.augmentation:
                if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in GUIDE_KEYS:
                    raise ValueError(
                        f"augmentation: {item!r} is not one of {{rotation: [low, high]}}, {{perspective: scale}}, "
                        f"{{jpeg_quality: [low, high]}}"
                    )
                key, value = next(iter(item.items()))
                if key == "rotation":
                    rotation = _pair(value, key, float)
                elif key == "perspective":
                    if not isinstance(value, (int, float)) or isinstance(value, bool):
                        raise ValueError(f"augmentation: perspective: expected a number, got {value!r}")
                    perspective = float(value)
                else:
                    quality = _pair(value, key, int)
        if not 0 <= perspective < 1:
            raise ValueError(f"perspective: {perspective} must be in [0, 1)")
        if not 1 <= quality[0] <= quality[1] <= 100:
            raise ValueError(f"jpeg_quality: {list(quality)} must be a range within [1, 100]")
        return Augment(rotation, perspective, quality)


SPEC = ComponentSpec(
    name="document",
    summary="Document VQA: DocVQA JSON or {image, question, answers} rows, optional scan augmentations",
    factory="vlmplug.plugins.datasets._document:build",
    config=DocumentConfig,
    flat_keys=("augmentation",),
    test_options={"path": "{document_json}", "augmentation": True},
)


@hookimpl
def register_dataset_formats(register) -> None:
    register(SPEC)


@hookimpl(trylast=True)
def detect_dataset_format(path: str, sample: dict[str, Any] | None) -> str | None:
    """A record with ``image``, ``question`` and ``answers``."""
    if isinstance(sample, dict) and {"image", "question", "answers"} <= sample.keys():
        return "document"
    return None
