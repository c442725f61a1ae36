"""LoRA through ``peft`` (Hu et al. 2021), scoped to the LLM of a vision-language model.

The adapter is saved with ``PeftModel.save_pretrained`` under ``adapter/``, so plain peft loads it:
``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), "adapter")``. When the LLM
was built from a preset (random init) its base weights are saved under ``llm_base/`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch


class LoraMethod:
    def __init__(self, config: Any):
        self.config = config
        self._base_state: dict[str, torch.Tensor] | None = None
        self.saves_base = False

    def model_load_kwargs(self) -> dict[str, Any]:
        return {}

    def apply(self, vlm: Any) -> Any:
        from peft import LoraConfig, get_peft_model

        c = self.config
        if vlm.manifest.get("save_llm_base"):  # a base no hub id reproduces (random init, a pretrained VLM's)
            self._capture_base(vlm)
            self.saves_base = True
        for p in vlm.parameters():
            p.requires_grad_(False)
        target = c.lora_target_modules
        to_save = list(c.lora_modules_to_save)
        tied = bool(getattr(vlm.llm.config, "tie_word_embeddings", False))
        peft_config = LoraConfig(
            r=c.lora_r,
            lora_alpha=c.lora_alpha,
            lora_dropout=c.lora_dropout,
            target_modules=target if isinstance(target, str) else list(target),
            modules_to_save=to_save or None,
            task_type="CAUSAL_LM",
            # tied input/output embeddings stay one matrix when both are trained in full (not two copies)
            ensure_weight_tying=tied and bool({"lm_head", "embed_tokens"} & set(to_save)),
        )
        vlm.llm = get_peft_model(vlm.llm, peft_config)
        for module in (vlm.connector, vlm.fusion_modules):
            for p in module.parameters() if module is not None else ():
                p.requires_grad_(True)
        if c.train_vision_encoder or getattr(vlm.vision_encoder, "trains_from_scratch", False):
            for p in vlm.vision_encoder.parameters():
                p.requires_grad_(True)
        vlm.peft_method = self
        return vlm

    def save_llm(self, vlm: Any, directory: str) -> dict[str, str]:
        directory = Path(directory)
        vlm.llm.save_pretrained(directory / "adapter")
        written = {"adapter": "adapter"}
        if self.saves_base:
            self.save_base(vlm, directory)
            written["llm_base"] = "llm_base"
        return written

    def _capture_base(self, vlm: Any) -> None:
        """Keep the base weights as they are before training (``modules_to_save`` would change them)."""
        self._base_state = {k: v.detach().clone() for k, v in vlm.llm.state_dict().items()}

    def save_base(self, vlm: Any, directory: Path) -> None:
        """Write the untrained base LLM to ``directory/llm_base``."""
        base = vlm.llm.get_base_model()
        fresh = type(base)(base.config)
        fresh.load_state_dict(self._base_state)
        fresh.save_pretrained(directory / "llm_base")

    def load_llm(self, directory: str, files: Mapping[str, str], load_base: Callable[[], Any]) -> Any:
        """The base (``llm_base/`` for a preset, else the model the run started from) with the adapter."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        root = Path(directory)
        base = (
            AutoModelForCausalLM.from_pretrained(root / files["llm_base"], dtype="auto")
            if "llm_base" in files
            else load_base()
        )
        return PeftModel.from_pretrained(base, root / files["adapter"])

    def merge(self, vlm: Any) -> Any:
        """Fold the adapters into the base weights (``merge_and_unload``)."""
        vlm.llm = vlm.llm.merge_and_unload()
        vlm.peft_method = None
        return vlm


def build(config: Any, ctx: Any) -> LoraMethod:
    return LoraMethod(config)
