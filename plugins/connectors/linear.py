"""``linear``: one linear projection from vision width to LLM width (LLaVA v1, Liu et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class LinearConfig:
    bias: bool = field(default=True, metadata={"help": "Use a bias term."})


SPEC = ComponentSpec(
    name="linear",
    summary="Linear projection of every vision token to the LLM width (LLaVA v1)",
    factory="vlmplug.plugins.connectors._projectors:build_linear",
    config=LinearConfig,
    aliases=("projection",),
)


@hookimpl
def register_connectors(register) -> None:
    register(SPEC)
