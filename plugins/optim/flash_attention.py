"""``flash-attention``: FlashAttention-2/3 (Dao 2023) as the LLM's attention kernel, through
transformers' ``attn_implementation``: exact attention in fused tiles, without the L x L score matrix.
Selected by the guide's ``attn_implementation: flash_attention_2``; sdpa stays the default.

Needs a CUDA GPU (Ampere or newer) and the ``flash-attn`` package (``pip install "vlmplug[flash]"``);
without either, selecting it stops before any model loads and says which is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class FlashAttentionConfig:
    attn_implementation: Literal["flash_attention_2", "flash_attention_3"] = field(
        default="flash_attention_2",
        metadata={"help": "flash_attention_2 (flash-attn 2.x, Ampere+) or flash_attention_3 (Hopper)."},
    )


SPEC = ComponentSpec(
    name="flash-attention",
    summary="FlashAttention-2/3 kernels for the LLM's attention (CUDA): faster, less memory",
    factory="vlmplug.plugins.optim._flash_attention:build",
    config=FlashAttentionConfig,
    extras={"flash_attn": "flash"},
    activated_by={"attn_implementation": ("flash_attention_2", "flash_attention_3")},
    flat_keys=("attn_implementation",),
)


@hookimpl
def register_optimizer_stack(register) -> None:
    register(SPEC)
