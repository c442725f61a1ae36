"""Gradient checkpointing on the LLM (and the vision tower) through transformers' own switch."""

from __future__ import annotations

from typing import Any


class GradientCheckpointing:
    def __init__(self, config: Any):
        self.kwargs = dict(config.gradient_checkpointing_kwargs)
        self.vision = config.vision_encoder

    def patch_model(self, vlm: Any) -> Any:
        vlm.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=self.kwargs)
        if hasattr(vlm.llm, "enable_input_require_grads") and self.kwargs.get("use_reentrant", True):
            vlm.llm.enable_input_require_grads()  # re-entrant checkpointing needs grad-carrying inputs
        vlm.llm.config.use_cache = False
        if self.vision and hasattr(vlm.vision_encoder, "gradient_checkpointing_enable"):
            vlm.vision_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=self.kwargs)
        return vlm


def build(config: Any, ctx: Any) -> GradientCheckpointing:
    return GradientCheckpointing(config)
