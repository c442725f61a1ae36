"""The LLM loads with ``attn_implementation`` set to a FlashAttention kernel; the factory checks the
GPU first, so a CPU machine stops before any model loads."""

from __future__ import annotations

from typing import Any

from vlmplug.contracts import OptimizerStackComponent
from vlmplug.errors import HardwareError


class FlashAttention(OptimizerStackComponent):
    def __init__(self, config: Any):
        self.implementation = config.attn_implementation

    def model_load_kwargs(self) -> dict[str, Any]:
        return {"attn_implementation": self.implementation}


def check_gpu(hardware: Any, what: str, fix: str) -> None:
    """Stop with the reason and the fix when there is no CUDA GPU."""
    if hardware is None or not hardware.cuda:
        name = getattr(hardware, "device_name", "this machine")
        raise HardwareError(f"{what} needs a CUDA GPU, and none was found ({name}); {fix}")


def build(config: Any, ctx: Any) -> FlashAttention:
    check_gpu(
        getattr(ctx, "hardware", None),
        f"flash-attention ({config.attn_implementation})",
        "use attn_implementation: sdpa (the default) on this machine",
    )
    return FlashAttention(config)
