"""``interleaved``: vision tokens take the place of ``<image>`` placeholders in the LLM's input
embeddings (LLaVA, Qwen-VL, DeepSeek-VL). No new LLM parameters."""

from __future__ import annotations

from vlmplug import ComponentSpec, hookimpl

SPEC = ComponentSpec(
    name="interleaved",
    summary="Vision tokens replace each <image> placeholder in the input embeddings (LLaVA)",
    factory="vlmplug.plugins.fusion._interleaved:build",
    default_when={},
    offers=("instruction",),
)


@hookimpl
def register_fusions(register) -> None:
    register(SPEC)
