"""``full``: full fine-tuning -- every parameter trains, except the parts listed in ``freeze``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlmplug import ComponentSpec, hookimpl

Part = Literal["vision_encoder", "connector", "llm", "fusion"]


@dataclass(frozen=True, kw_only=True)
class FullConfig:
    freeze: list[Part] = field(
        default_factory=list,
        metadata={
            "help": "Parts kept frozen: any of vision_encoder, connector, llm, fusion (the "
            "modules a fusion adds). A fusion may keep parts frozen "
            "itself (cross-attention: the LLM)."
        },
    )


SPEC = ComponentSpec(
    name="full",
    summary="Full fine-tuning of every part (optionally freezing some)",
    factory="vlmplug.plugins.peft._full:build",
    config=FullConfig,
    default_when={"use_peft": False},
    contradicts={"use_peft": True},
)


@hookimpl
def register_peft_methods(register) -> None:
    register(SPEC)
