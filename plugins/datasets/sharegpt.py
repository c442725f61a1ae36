"""``sharegpt``: ShareGPT-style conversations -- ``{"conversations": [{"from", "value"}], "images": [...],
"system": ...}`` with ``from`` one of human / user, gpt / assistant, system (the layout of ShareGPT,
ShareGPT4V and LLaMA-Factory's ``sharegpt`` datasets). Images (``images``, or one ``image``) are
relative to ``image_root`` (default: the file's folder); a top-level ``system`` becomes the system turn.
Detected (with ``llava``) by ``vlmplug.plugins.datasets.llava``: a conversation record without ``image``.
"""

from __future__ import annotations

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
