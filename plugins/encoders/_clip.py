"""CLIP vision tower and a PIL/numpy image pipeline (Radford et al. 2021; LLaVA feature choice).

Built from a hub id or local path through ``CLIPVisionModel.from_pretrained`` (a full CLIP checkpoint
works: the text tower is skipped), or from a small random-init config (``model: tiny``).
Images go through the checkpoint's own preprocessing settings (shortest-edge resize, centre crop,
rescale, normalise), computed here with PIL and numpy so no torchvision is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

_RESAMPLE = {0: Image.NEAREST, 1: Image.LANCZOS, 2: Image.BILINEAR, 3: Image.BICUBIC, 4: Image.BOX, 5: Image.HAMMING}


class ImagePipeline:
    """CLIP-style preprocessing from an image processor's settings; returns ``[B, 3, S, S]`` float32."""

    def __init__(self, processor: Any):
        self.processor = processor
        size = processor.size or {}
        crop = processor.crop_size or {}
        self.shortest_edge = int(size.get("shortest_edge") or size.get("height") or 224)
        self.crop = (int(crop.get("height", self.shortest_edge)), int(crop.get("width", self.shortest_edge)))
        resample = getattr(processor, "resample", None)
        self.resample = _RESAMPLE.get(int(resample if resample is not None else 3), Image.BICUBIC)
        self.scale = float(processor.rescale_factor) if processor.do_rescale else 1.0
        mean = np.asarray(processor.image_mean if processor.do_normalize else (0, 0, 0), dtype=np.float32)
        std = np.asarray(processor.image_std if processor.do_normalize else (1, 1, 1), dtype=np.float32)
        self._mean = torch.from_numpy(mean.reshape(1, 3, 1, 1) / self.scale)
        self._inv_std = torch.from_numpy((1.0 / std).reshape(1, 3, 1, 1) * self.scale)

    def _one(self, image: Image.Image) -> np.ndarray:
        """Resize (shortest edge) and centre-crop one image; returns ``uint8 [S, S, 3]``."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        ch, cw = self.crop
        if min(w, h) != self.shortest_edge:
            if w <= h:
                nw, nh = self.shortest_edge, int(self.shortest_edge * h / w)
            else:
                nw, nh = int(self.shortest_edge * w / h), self.shortest_edge
            image = image.resize((nw, nh), self.resample)
            w, h = nw, nh
        if (w, h) != (cw, ch):
            left, top = (w - cw) // 2, (h - ch) // 2
            image = image.crop((left, top, left + cw, top + ch))
        return np.asarray(image)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack([self._one(im) for im in images])).permute(0, 3, 1, 2).float()
        return (batch - self._mean) * self._inv_std


class ClipVisionTower(nn.Module):
    """``pixel_values [B, 3, S, S]`` -> features ``[B, N, D]`` from ``feature_layer``."""

    def __init__(
        self, model: nn.Module, processor: Any, feature_layer: int, drop_cls: bool, weights_source: str | None
    ):
        super().__init__()
        self.model = model
        self.image_processor = processor
        self.pipeline = ImagePipeline(processor)
        self.feature_layer = feature_layer
        self.drop_cls = drop_cls
        self.weights_source = weights_source
        cfg = model.config
        grid = cfg.image_size // cfg.patch_size
        self.hidden_size = cfg.hidden_size
        self.num_patches = grid * grid + (0 if drop_cls else 1)
        self.image_size = cfg.image_size

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return self.pipeline(images)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        feats = out.hidden_states[self.feature_layer]
        return feats[:, 1:] if self.drop_cls else feats

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Checkpoint the transformer layers (transformers 5's switch on the wrapped model)."""
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs)

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)


def build(config: Any, ctx: Any) -> ClipVisionTower:
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    if config.model == "tiny":
        h = config.tiny_hidden_size
        vcfg = CLIPVisionConfig(
            hidden_size=h,
            intermediate_size=4 * h,
            num_hidden_layers=config.tiny_layers,
            num_attention_heads=config.tiny_heads,
            image_size=config.tiny_image_size,
            patch_size=config.tiny_patch_size,
            projection_dim=h,
        )
        if abs(config.feature_layer) > vcfg.num_hidden_layers:
            raise ValueError(
                f"feature_layer {config.feature_layer} is out of range for {vcfg.num_hidden_layers} layers"
            )
        model = CLIPVisionModel(vcfg)
        size = config.tiny_image_size
        processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        return ClipVisionTower(model, processor, config.feature_layer, config.drop_cls, weights_source=None)
    model = CLIPVisionModel.from_pretrained(config.model, dtype=ctx.torch_dtype, **ctx.hub_kwargs)
    processor = CLIPImageProcessorPil.from_pretrained(config.model, **ctx.hub_kwargs)
    return ClipVisionTower(model, processor, config.feature_layer, config.drop_cls, weights_source=config.model)
