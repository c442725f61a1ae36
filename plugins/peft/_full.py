"""Full fine-tuning: every parameter of the chosen parts trains."""

from __future__ import annotations

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

    def save_llm(self, vlm: Any, directory: Path) -> dict[str, str]:
        vlm.llm.save_pretrained(Path(directory) / "llm")
        return {"llm": "llm"}


def build(config: Any, ctx: Any) -> FullFineTuning:
    return FullFineTuning(config)
