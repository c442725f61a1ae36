"""``sharegpt``: ShareGPT-style conversations -- ``{"conversations": [{"from", "value"}], "images": [...],
"system": ...}`` with ``from`` one of human / user, gpt / assistant, system (the layout of ShareGPT,
ShareGPT4V and LLaMA-Factory's ``sharegpt`` datasets). Images (``images``, or one ``image``) are
relative to ``image_root`` (default: the file's folder); a top-level ``system`` becomes the system turn.
"""

from __future__ import annotations

from typing import Any

from vlmplug import ComponentSpec, hookimpl

from .llava import ConversationsConfig

SPEC = ComponentSpec(
    name="sharegpt",
    summary="ShareGPT / ShareGPT4V conversations: {conversations: [{from, value}], images, system}",
    factory="vlmplug.plugins.datasets._conversations:build",
    config=ConversationsConfig,
    test_options={"path": "{llava_json}"},
)


@hookimpl
def register_dataset_formats(register) -> None:
    register(SPEC)


@hookimpl(trylast=True)
def detect_dataset_format(path: str, sample: dict[str, Any] | None) -> str | None:
    from ._conversations import is_conversation

    return "sharegpt" if is_conversation(sample) else None
