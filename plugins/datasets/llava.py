"""``llava``: LLaVA-Instruct JSON (Liu et al. 2023, "Visual Instruction Tuning") -- a list of records
``{"id", "image", "conversations": [{"from": "human" | "gpt", "value"}]}``, as in
``llava_instruct_150k.json`` and LLaVA-1.5's ``llava_v1_5_mix665k.json`` (ShareGPT4V's files use the
same layout). ``image`` is relative to ``image_root`` (e.g. the COCO ``train2017`` folder; default: the
JSON file's folder); records without ``image`` are text-only conversations. JSONL works too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class ConversationsConfig:
    path: str = field(default="", metadata={"help": "A .json (list of records) or .jsonl file."})
    image_root: str | None = field(
        default=None, metadata={"help": "Folder the image paths are relative to (default: the file's)."}
    )
    max_samples: int | None = field(default=None, metadata={"help": "Read at most this many records."})

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path: this format needs a file path")


SPEC = ComponentSpec(
    name="llava",
    summary="LLaVA-Instruct JSON: {image, conversations: [{from: human|gpt, value}]} records",
    factory="vlmplug.plugins.datasets._conversations:build",
    config=ConversationsConfig,
    test_options={"path": "{llava_json}"},
)


@hookimpl
def register_dataset_formats(register) -> None:
    register(SPEC)


@hookimpl(trylast=True)
def detect_dataset_format(path: str, sample: dict[str, Any] | None) -> str | None:
    """Conversations of ``from`` / ``value`` turns: ``llava`` with an ``image``, else ``sharegpt``."""
    from ._conversations import is_conversation

    if not is_conversation(sample):
        return None
    return "llava" if isinstance(sample, dict) and "image" in sample else "sharegpt"
