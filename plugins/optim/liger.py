"""``liger``: Liger Kernels (Hsu et al. 2024, linkedin/Liger-Kernel) -- Triton kernels for the LLM's
RMSNorm, RoPE, SwiGLU and a fused linear cross-entropy that never materialises the full logits.
Selected by the guide's ``use_liger: true``.

Needs a CUDA GPU and ``liger-kernel`` (``pip install "vlmplug[liger]"``); without either, selecting it
stops before any model loads and says which is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class LigerConfig:
    rms_norm: bool = field(default=True, metadata={"help": "Fused RMSNorm."})
    rope: bool = field(default=True, metadata={"help": "Fused rotary position embedding."})
    swiglu: bool = field(default=True, metadata={"help": "Fused SwiGLU MLP."})
    fused_linear_cross_entropy: bool = field(
        default=True, metadata={"help": "Loss fused with the output layer (no full logits in memory)."}
    )


SPEC = ComponentSpec(
    name="liger",
    summary="Liger Triton kernels for the LLM (RMSNorm, RoPE, SwiGLU, fused CE) on CUDA",
    factory="vlmplug.plugins.optim._liger:build",
    config=LigerConfig,
    extras={"liger_kernel": "liger"},
    activated_by={"use_liger": True},
)


@hookimpl
def register_optimizer_stack(register) -> None:
    register(SPEC)
