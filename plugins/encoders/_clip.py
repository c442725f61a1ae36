"""CLIP vision tower and a PIL/numpy image pipeline (Radford et al. 2021; LLaVA feature choice).

Built from a hub id or local path through ``CLIPVisionModel.from_pretrained`` (a full CLIP checkpoint
works: the text tower is skipped), or from a small random-init config (``model: tiny``).
Images go through the checkpoint's own preprocessing settings (shortest-edge resize, centre crop,
rescale, normalise), computed here with PIL and numpy so no torchvision is needed.

:class:`ClipVisionTower` also carries what every ViT tower here shares (``siglip`` subclasses it):
the feature layer, ``image_resolution`` through transformers' ``interpolate_pos_encoding`` (bicubic
interpolation of the patch position embeddings, after DINO / DINOv2) and adaptive pooling of the
patch grid (:mod:`._pooling`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ._pooling import adaptive_pool_grid, resolve_grid

_R = Image.Resampling
_RESAMPLE = {0: _R.NEAREST, 1: _R.LANCZOS, 2: _R.BILINEAR, 3: _R.BICUBIC, 4: _R.BOX, 5: _R.HAMMING}


class ImagePipeline:
    """CLIP-style preprocessing from an image processor's settings; returns ``[B, 3, S, S]`` float32."""

    def __init__(self, processor: Any):
        self.processor = processor
        self._geometry(processor)
        resample = getattr(processor, "resample", None)
        self.resample = _RESAMPLE.get(int(resample if resample is not None else 3), _R.BICUBIC)
        self.scale = float(processor.rescale_factor) if processor.do_rescale else 1.0
        mean = np.asarray(processor.image_mean if processor.do_normalize else (0, 0, 0), dtype=np.float32)
        std = np.asarray(processor.image_std if processor.do_normalize else (1, 1, 1), dtype=np.float32)
        self._mean = torch.from_numpy(mean.reshape(1, 3, 1, 1) / self.scale)
        self._inv_std = torch.from_numpy((1.0 / std).reshape(1, 3, 1, 1) * self.scale)

    def _geometry(self, processor: Any) -> None:
        """The resize target (shortest edge) and the centre crop ``(height, width)``."""
        size = processor.size or {}
        crop = processor.crop_size or {}
        self.shortest_edge = int(size.get("shortest_edge") or size.get("height") or 224)
        self.crop = (int(crop.get("height", self.shortest_edge)), int(crop.get("width", self.shortest_edge)))

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


def clip_processor_at(processor: Any, resolution: int) -> Any:
    """``processor`` resizing the shortest edge to ``resolution`` and centre-cropping a square of it."""
    return type(processor).from_dict(
        processor.to_dict(),
        size={"shortest_edge": resolution},
        crop_size={"height": resolution, "width": resolution},
    )


class ClipVisionTower(nn.Module):
    """``pixel_values [B, 3, S, S]`` -> features ``[B, N, D]`` from ``feature_layer``.

    ``S`` is ``image_size``: the pretrained resolution, or ``image_resolution`` (position embeddings
    interpolated). The ``grid_size x grid_size`` patch grid is pooled to ``pooled_grid`` per side
    with adaptive pooling; the CLS token is kept in front of it or dropped (``drop_cls``)."""

    #: Tokens before the patch grid in the tower's hidden states (CLIP's CLS).
    prefix_tokens = 1
    pipeline_class: type[ImagePipeline] = ImagePipeline

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        feature_layer: int,
        drop_cls: bool,
        weights_source: str | None,
        *,
        image_resolution: int | None = None,
        patch_pooling: str = "none",
        pooled_grid: int | None = None,
    ):
        super().__init__()
        layers, pretrained_size, patch_size, hidden_size = self.geometry(model)
        if feature_layer == 0 or abs(feature_layer) > layers:
            raise ValueError(f"feature_layer {feature_layer} is out of range for {layers} layers (use -1 .. -{layers})")
        self.model: Any = model
        self.feature_layer = feature_layer
        self.drop_cls = drop_cls
        self.weights_source = weights_source
        self.pretrained_image_size = pretrained_size
        self.patch_size = patch_size
        self.image_size, self.grid_size, self.pooled_grid = resolve_grid(
            self.patch_size, self.pretrained_image_size, image_resolution, patch_pooling, pooled_grid
        )
        self.interpolate_pos_encoding = image_resolution is not None
        if image_resolution is not None:
            processor = self.processor_at(processor, self.image_size)
        self.image_processor = processor
        self.pipeline = self.pipeline_class(processor)
        self.hidden_size = hidden_size
        self.num_patches = self.pooled_grid**2 + (0 if drop_cls else self.prefix_tokens)

    @staticmethod
    def geometry(model: nn.Module) -> tuple[int, int, int, int]:
        """``(layers, pretrained image size, patch size, width)`` of the wrapped model."""
        cfg: Any = model.config
        return int(cfg.num_hidden_layers), int(cfg.image_size), int(cfg.patch_size), int(cfg.hidden_size)

    @staticmethod
    def processor_at(processor: Any, resolution: int) -> Any:
        """The image processor with its output size set to ``resolution``."""
        return clip_processor_at(processor, resolution)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return self.pipeline(images)

    def hidden_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The hidden state of ``feature_layer``: ``[B, prefix_tokens + grid_size**2, D]``."""
        out = self.model(
            pixel_values=pixel_values,
            output_hidden_states=True,
            interpolate_pos_encoding=self.interpolate_pos_encoding,
        )
        return out.hidden_states[self.feature_layer]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"pixel_values are {tuple(pixel_values.shape[-2:])}; this tower runs at "
                f"{self.image_size} x {self.image_size} (use its preprocess())"
            )
        dtype = next(self.model.parameters()).dtype
        feats = self.hidden_features(pixel_values.to(dtype))
        prefix, patches = feats[:, : self.prefix_tokens], feats[:, self.prefix_tokens :]
        if self.pooled_grid != self.grid_size:
            patches = adaptive_pool_grid(patches, self.pooled_grid)
        return patches if self.drop_cls else torch.cat([prefix, patches], dim=1)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Checkpoint the transformer layers (transformers 5's switch on the wrapped model)."""
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs)

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)


def _grid_options(config: Any) -> dict[str, Any]:
    return {
        "image_resolution": config.image_resolution,
        "patch_pooling": config.patch_pooling,
        "pooled_grid": config.pooled_grid,
    }


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
        return ClipVisionTower(
            model, processor, config.feature_layer, config.drop_cls, weights_source=None, **_grid_options(config)
        )
    model = CLIPVisionModel.from_pretrained(config.model, dtype=ctx.torch_dtype, **ctx.hub_kwargs)
    processor = CLIPImageProcessorPil.from_pretrained(config.model, **ctx.hub_kwargs)
    return ClipVisionTower(
        model, processor, config.feature_layer, config.drop_cls, weights_source=config.model, **_grid_options(config)
    )
