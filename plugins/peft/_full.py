"""Full fine-tuning: every parameter of the chosen parts trains; the LLM is saved as a plain
transformers model (``llm/``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PARTS = ("vision_encoder", "connector", "llm")


class FullFineTuning:
    def __init__(self, config: Any):
        self.freeze = set(config.freeze)

    def model_load_kwargs(self) -> dict[str, Any]:
        return {}

    def apply(self, vlm: Any) -> Any:
        for part in PARTS:
            trainable = part not in self.freeze
            for p in getattr(vlm, part).parameters():
                p.requires_grad_(trainable)
        vlm.peft_method = self
        return vlm

    def save_llm(self, vlm: Any, directory: str) -> dict[str, str]:
        vlm.llm.save_pretrained(Path(directory) / "llm")
        return {"llm": "llm"}

    def load_llm(self, directory: str, files: Mapping[str, str], load_base: Callable[[], Any]) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(Path(directory) / files["llm"], dtype="auto")

    def merge(self, vlm: Any) -> Any:
        return vlm


def build(config: Any, ctx: Any) -> FullFineTuning:
    return FullFineTuning(config)
