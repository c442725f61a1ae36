"""The assembled vision-language model: vision tower -> connector -> fusion into the LLM.

Fusion components subclass :class:`VisionLanguageModel` and implement ``forward`` and
``generate``; saving is shared. Layout of a saved model directory::

    vision_encoder/         (when trained or built from a preset)
    connector.safetensors
    llm/ or adapter/ (+ llm_base/ for a preset LLM under an adapter method)
    vlmplug_model.json      which components, with their options
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

__all__ = ["VisionLanguageModel"]


class VisionLanguageModel(nn.Module):
    """Base class of fused models. ``image_token_id`` marks vision positions in ``input_ids``."""

    _keys_to_ignore_on_save = None  # read by transformers' Trainer when it resumes a checkpoint

    def __init__(self, vision_encoder: nn.Module, connector: nn.Module, llm: nn.Module, image_token_id: int):
        super().__init__()
        self.vision_encoder = vision_encoder
        self.connector = connector
        self.llm = llm
        self.image_token_id = int(image_token_id)
        self.peft_method: Any = None  # set by the PEFT method; decides how the LLM is saved
        self.manifest: dict[str, Any] = {}

    @property
    def config(self) -> Any:  # transformers' Trainer reads a few fields from model.config
        return self.llm.config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N_img, 3, H, W]`` -> LLM-width vision tokens ``[N_img, T, H_llm]``."""
        feats = self.vision_encoder(pixel_values)
        return self.connector(feats)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 pixel_values: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def save_pretrained(self, directory: str | Path, **_: Any) -> None:
        """Write every part with safetensors (the caller makes the write atomic)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        enc = self.vision_encoder
        if getattr(enc, "from_preset", False) or any(p.requires_grad for p in enc.parameters()):
            enc.save_pretrained(directory / "vision_encoder")
        state = {k: v.detach().contiguous().cpu() for k, v in self.connector.state_dict().items()}
        save_file(state, str(directory / "connector.safetensors"), metadata={"format": "pt"})
        written = self.peft_method.save_llm(self, directory) if self.peft_method else {}
        manifest = {**self.manifest, "image_token_id": self.image_token_id, "llm_files": written}
        (directory / "vlmplug_model.json").write_text(json.dumps(manifest, indent=2, default=str))
