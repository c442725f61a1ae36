"""Full fine-tuning: every parameter of the chosen parts trains; the LLM is saved as a plain
transformers model (``llm/``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PARTS = ("vision_encoder", "connector", "llm", "fusion")


def part_modules(vlm: Any, part: str) -> Any:
    """The module of a part (``fusion``: the new modules a fusion adds, or ``None``)."""
    return vlm.fusion_modules if part == "fusion" else getattr(vlm, part)


class FullFineTuning:
    def __init__(self, config: Any):
        self.freeze = set(config.freeze)

    def model_load_kwargs(self) -> dict[str, Any]:
        return {}

    def apply(self, vlm: Any) -> Any:
        """Every part trains but those in ``freeze`` and, unless named in ``freeze`` or not, the parts the
        fusion keeps frozen (``keep_frozen``, e.g. the LLM under Flamingo-style cross-attention); a
        vision encoder that ``trains_from_scratch`` always trains unless named in ``freeze``."""
        frozen = self.freeze | set(vlm.keep_frozen)
        if getattr(vlm.vision_encoder, "trains_from_scratch", False) and "vision_encoder" not in self.freeze:
            frozen.discard("vision_encoder")  # nothing pretrained to keep (e.g. the ``patches`` projection)
        for part in PARTS:
            module = part_modules(vlm, part)
            for p in module.parameters() if module is not None else ():
                p.requires_grad_(part not in frozen)
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
