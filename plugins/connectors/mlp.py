"""``mlp``: the LLaVA-1.5 projector, Linear -> GELU -> Linear (Liu et al. 2024, "Improved Baselines")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class MlpConfig:
    depth: int = field(default=2, metadata={"help": "Number of linear layers (LLaVA-1.5: 2, 'mlp2x_gelu')."})
    hidden_act: Literal["gelu", "relu", "silu"] = field(default="gelu", metadata={"help": "Activation between layers."})

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError("depth must be at least 1")


SPEC = ComponentSpec(
    name="mlp",
    summary="2-layer GELU MLP projector, one LLM token per vision token (LLaVA-1.5)",
    factory="vlmplug.plugins.connectors._projectors:build_mlp",
    config=MlpConfig,
)


@hookimpl
def register_connectors(register) -> None:
    register(SPEC)
