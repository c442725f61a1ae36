"""SigLIP vision tower and its PIL/numpy image pipeline (Zhai et al. 2023; PaliGemma / Idefics2).

Built from a hub id or local path through ``SiglipVisionModel.from_pretrained`` (a full SigLIP
checkpoint works: the text tower is skipped; the attention-pooling head is not loaded), or from a
small random-init config (``model: tiny``). Images go through the checkpoint's own
``SiglipImageProcessor`` settings -- a plain resize to ``size`` (no aspect-preserving resize, no
crop), rescale, normalise (mean = std = 0.5 on the hub checkpoints) -- computed with PIL and numpy.

The tower shares :class:`~._clip.ClipVisionTower`'s feature selection, position interpolation and
patch pooling, with no prefix token: SigLIP has no CLS.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ._clip import ClipVisionTower, ImagePipeline


class SiglipImagePipeline(ImagePipeline):
    """SigLIP preprocessing: resize straight to ``(height, width)``, rescale, normalise."""

    def _geometry(self, processor: Any) -> None:
        size = processor.size or {}
        height = size.get("height") or size.get("shortest_edge") or 224
        width = size.get("width") or size.get("shortest_edge") or height
        self.size = (int(height), int(width))

    def _one(self, image: Image.Image) -> np.ndarray:
        """Resize one image to the target size, aspect ratio not kept; returns ``uint8 [H, W, 3]``."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        height, width = self.size
        if image.size != (width, height):
            image = image.resize((width, height), self.resample)
        return np.asarray(image)


def siglip_processor_at(processor: Any, resolution: int) -> Any:
    """``processor`` resizing to ``resolution x resolution``."""
    return type(processor).from_dict(processor.to_dict(), size={"height": resolution, "width": resolution})


class SiglipVisionTower(ClipVisionTower):
    """``pixel_values [B, 3, S, S]`` -> patch features ``[B, N, D]`` from ``feature_layer``
    (``N = pooled_grid**2``; every token is a patch)."""

    prefix_tokens = 0
    pipeline_class = SiglipImagePipeline

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        feature_layer: int,
        weights_source: str | None,
        *,
        post_layernorm: bool = False,
        image_resolution: int | None = None,
        patch_pooling: str = "none",
        pooled_grid: int | None = None,
    ):
        # drop_cls=False: nothing is dropped from the hidden states (LLaVA's "full" select strategy)
        super().__init__(
            model,
            processor,
            feature_layer,
            False,
            weights_source,
            image_resolution=image_resolution,
            patch_pooling=patch_pooling,
            pooled_grid=pooled_grid,
        )
        self.post_layernorm = post_layernorm

    @staticmethod
    def processor_at(processor: Any, resolution: int) -> Any:
        return siglip_processor_at(processor, resolution)

    def hidden_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = super().hidden_features(pixel_values)
        if self.post_layernorm:
            feats = self.model.post_layernorm(feats)
        return feats


def build(config: Any, ctx: Any) -> SiglipVisionTower:
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    options: dict[str, Any] = {
        "post_layernorm": config.post_layernorm,
        "image_resolution": config.image_resolution,
        "patch_pooling": config.patch_pooling,
        "pooled_grid": config.pooled_grid,
    }
    if config.model == "tiny":
        h = config.tiny_hidden_size
        vcfg = SiglipVisionConfig(
            hidden_size=h,
            intermediate_size=4 * h,
            num_hidden_layers=config.tiny_layers,
            num_attention_heads=config.tiny_heads,
            image_size=config.tiny_image_size,
            patch_size=config.tiny_patch_size,
            vision_use_head=False,
        )
        size = config.tiny_image_size
        processor = SiglipImageProcessorPil(size={"height": size, "width": size})
        return SiglipVisionTower(SiglipVisionModel(vcfg), processor, config.feature_layer, None, **options)
    model = SiglipVisionModel.from_pretrained(
        config.model, dtype=ctx.torch_dtype, vision_use_head=False, **ctx.hub_kwargs
    )
    processor = SiglipImageProcessorPil.from_pretrained(config.model, **ctx.hub_kwargs)
    return SiglipVisionTower(model, processor, config.feature_layer, config.model, **options)
