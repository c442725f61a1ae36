"""Gradient (activation) checkpointing on the LLM and, where supported, the vision tower, through
transformers' own switch (``activation_checkpointing_enable`` in transformers 5, the older
``gradient_checkpointing_enable`` where that is all a model has)."""

from __future__ import annotations

from typing import Any

from vlmplug.contracts import OptimizerStackComponent


def enable_checkpointing(model: Any, kwargs: dict[str, Any]) -> bool:
    """Switch checkpointing on for a transformers model; ``False`` when it has no switch."""
    new = getattr(model, "activation_checkpointing_enable", None)
    if callable(new):
        new(activation_checkpointing_kwargs=kwargs)
        return True
    old = getattr(model, "gradient_checkpointing_enable", None)
    if callable(old):
        old(gradient_checkpointing_kwargs=kwargs)
        return True
    return False


class GradientCheckpointing(OptimizerStackComponent):
    def __init__(self, config: Any):
        self.kwargs = dict(config.gradient_checkpointing_kwargs)
        self.vision = config.vision_encoder

    def patch_model(self, vlm: Any) -> Any:
        enable_checkpointing(vlm.llm, self.kwargs)
        if hasattr(vlm.llm, "enable_input_require_grads") and self.kwargs.get("use_reentrant", True):
            vlm.llm.enable_input_require_grads()  # re-entrant checkpointing needs grad-carrying inputs
        vlm.llm.config.use_cache = False
        if self.vision:
            enable_checkpointing(vlm.vision_encoder, self.kwargs)
        return vlm


def build(config: Any, ctx: Any) -> GradientCheckpointing:
    return GradientCheckpointing(config)
