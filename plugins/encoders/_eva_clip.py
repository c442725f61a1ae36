"""EVA-02 / EVA-CLIP towers through timm, wrapped as a :class:`~._clip.ClipVisionTower`.

Loading goes through ``timm.create_model`` (``pretrained=True`` for a timm name or ``timm/...`` hub
id; ``local-dir:`` for a directory timm saved), with the classifier head removed. The image pipeline
is timm's evaluation transform for the tower's ``pretrained_cfg`` -- shortest edge resized to
``input_size / crop_pct`` (bicubic), centre crop, CLIP mean / std -- expressed as a transformers
``CLIPImageProcessorPil`` so it runs with PIL and numpy and is saved with the model. Features are the
output of block ``feature_layer`` from timm's ``forward_intermediates`` (before the final norm).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._clip import ClipVisionTower

#: Base architecture of the ``tiny`` preset (only its layout: widths and depth come from the options).
TINY_ARCH = "eva02_tiny_patch14_224"
_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def import_timm() -> Any:
    """``timm``, or an ``ImportError`` with the fix when it is missing or cannot import (timm
    imports torchvision, whose build must match the installed torch)."""
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            f"eva-clip needs timm, which failed to import ({e}); install it with a torchvision that "
            f'matches torch {torch.__version__}: pip install "vlmplug[eva-clip]"'
        ) from e
    except RuntimeError as e:  # e.g. "operator torchvision::nms does not exist": a mismatched torchvision
        raise ImportError(
            f"eva-clip: timm failed to import because torchvision does not match torch {torch.__version__} "
            f"({e}); install the torchvision built for this torch"
        ) from e
    return timm


def processor_for(pretrained_cfg: dict[str, Any], size: int) -> Any:
    """A ``CLIPImageProcessorPil`` doing timm's eval transform for ``pretrained_cfg`` at ``size`` pixels
    (its ``crop_pct`` applies at the size it was set for; at any other, the crop is the whole resize)."""
    from transformers import CLIPImageProcessorPil

    native = int(pretrained_cfg.get("input_size", (3, size, size))[-1]) == size
    crop_pct = float(pretrained_cfg.get("crop_pct") or 1.0) if native else 1.0
    return CLIPImageProcessorPil(
        size={"shortest_edge": math.floor(size / crop_pct)},
        crop_size={"height": size, "width": size},
        resample=_RESAMPLE.get(str(pretrained_cfg.get("interpolation", "bicubic")), 3),
        image_mean=list(pretrained_cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        image_std=list(pretrained_cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
    )


class EvaClipTower(ClipVisionTower):
    """``pixel_values [B, 3, S, S]`` -> features ``[B, N, D]`` from an EVA tower's block ``feature_layer``."""

    prefix_tokens = 1

    def __init__(
        self,
        model: nn.Module,
        feature_layer: int,
        drop_cls: bool,
        weights_source: str | None,
        *,
        image_resolution: int | None = None,
        patch_pooling: str = "none",
        pooled_grid: int | None = None,
    ):
        cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
        super().__init__(
            model,
            processor_for(cfg, self.geometry(model)[1]),
            feature_layer,
            drop_cls,
            weights_source,
            image_resolution=image_resolution,
            patch_pooling=patch_pooling,
            pooled_grid=pooled_grid,
        )
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        self.num_patches = self.pooled_grid**2 + (0 if drop_cls else self.prefix_tokens)
        self.pretrained_cfg = cfg
        if image_resolution is not None:
            # timm resamples the absolute position embedding (bicubic) and rebuilds the rotary grid
            self.model.set_input_size(img_size=(self.image_size, self.image_size))
            self.image_processor = processor_for(cfg, self.image_size)
            self.pipeline = self.pipeline_class(self.image_processor)

    @staticmethod
    def geometry(model: nn.Module) -> tuple[int, int, int, int]:
        m: Any = model
        size, patch = m.patch_embed.img_size, m.patch_embed.patch_size
        if size[0] != size[1] or patch[0] != patch[1]:
            raise ValueError(f"eva-clip needs a square tower; this one takes {size} with {patch} patches")
        return len(m.blocks), int(size[0]), int(patch[0]), int(m.embed_dim)

    @staticmethod
    def processor_at(processor: Any, resolution: int) -> Any:
        return processor  # replaced in __init__ once the tower is resized

    def hidden_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Block ``feature_layer``'s output, ``[B, prefix + grid**2, D]`` (CLS first)."""
        (patches, prefix), *_ = self.model.forward_intermediates(
            pixel_values,
            indices=[self.feature_layer],
            return_prefix_tokens=True,
            norm=False,
            output_fmt="NLC",
            intermediates_only=True,
        )
        return torch.cat([prefix, patches], dim=1)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """timm's switch: every block runs under (non-reentrant) ``torch.utils.checkpoint``."""
        self.model.set_grad_checkpointing(True)

    def save_pretrained(self, directory: str | Path) -> None:
        """timm's own layout (``config.json`` + ``model.safetensors``), loadable with ``local-dir:``."""
        timm = import_timm()
        timm.models.save_for_hf(self.model, str(directory), safe_serialization=True)
        self.image_processor.save_pretrained(directory)


def _timm_name(model: str) -> str:
    """``local-dir:PATH`` for a directory, ``hf-hub:timm/...`` for a hub id, else the timm name."""
    if Path(model).is_dir():
        return f"local-dir:{Path(model).resolve()}"
    return f"hf-hub:{model}" if "/" in model else model


def build(config: Any, ctx: Any) -> EvaClipTower:
    timm = import_timm()
    options: dict[str, Any] = {
        "image_resolution": config.image_resolution,
        "patch_pooling": config.patch_pooling,
        "pooled_grid": config.pooled_grid,
    }
    if config.model == "tiny":
        model = timm.create_model(
            TINY_ARCH,
            pretrained=False,
            num_classes=0,
            img_size=config.tiny_image_size,
            patch_size=config.tiny_patch_size,
            embed_dim=config.tiny_hidden_size,
            depth=config.tiny_layers,
            num_heads=config.tiny_heads,
        )
        return EvaClipTower(model, config.feature_layer, config.drop_cls, None, **options)
    name = _timm_name(config.model)
    arch = name.split(":", 1)[-1].removeprefix("timm/").split(".")[0]
    if not name.startswith(("local-dir:", "hf-hub:")) and not timm.is_model(arch):
        raise ValueError(
            f"eva-clip: timm has no model '{config.model}'; use a timm name such as "
            f"'eva02_large_patch14_clip_336.merged2b', a 'timm/...' hub id or a directory saved by timm"
        )
    model = timm.create_model(name, pretrained=True, num_classes=0)
    dtype = getattr(ctx, "torch_dtype", None)
    if isinstance(dtype, torch.dtype):
        model = model.to(dtype)
    return EvaClipTower(model, config.feature_layer, config.drop_cls, config.model, **options)
