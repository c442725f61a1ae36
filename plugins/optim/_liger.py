"""Liger's kernels patched into the LLM instance (``_apply_liger_kernel_to_instance``: the model's own
modules are swapped for Liger's, by model type), after PEFT wrapped it."""

from __future__ import annotations

from typing import Any

from vlmplug.contracts import OptimizerStackComponent

from ._flash_attention import check_gpu


class Liger(OptimizerStackComponent):
    def __init__(self, config: Any):
        self.options = {
            "rms_norm": config.rms_norm,
            "rope": config.rope,
            "swiglu": config.swiglu,
            "fused_linear_cross_entropy": config.fused_linear_cross_entropy,
        }

    def patch_model(self, vlm: Any) -> Any:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        llm = vlm.llm.get_base_model() if hasattr(vlm.llm, "get_base_model") else vlm.llm
        _apply_liger_kernel_to_instance(model=llm, **self.options)
        return vlm


def build(config: Any, ctx: Any) -> Liger:
    check_gpu(getattr(ctx, "hardware", None), "liger (Triton kernels)", "drop use_liger / --plugins liger here")
    return Liger(config)
