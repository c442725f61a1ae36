"""Raw-patch "encoder" (Fuyu) with Pix2Struct's variable-resolution input, in torch.

``pixel_values`` is ``float32 [B, max_patches, 4 + 3 * p * p]``: per patch slot, its row and column
(1-based; 0 marks a padding slot) as two base-64 digits each -- integers below 64 stay exact when a
trainer casts floating inputs to bf16 / fp16 -- then the patch's pixels in ``(y, x, channel)`` order,
scaled to [-1, 1]. Slots are filled row by row; those past ``rows * cols`` are padding.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

#: Channels before the pixels in a patch slot: row high, row low, column high, column low.
ID_CHANNELS = 4
_BASE = 64


def patch_grid(width: int, height: int, patch_size: int, max_patches: int) -> tuple[int, int]:
    """``(rows, cols)``: the largest grid of the image's aspect ratio with ``rows * cols <= max_patches``.

    The image is scaled by ``s = sqrt(max_patches * p^2 / (w * h))`` (up or down), and each side takes
    ``floor(s * side / p)`` patches, at least 1; a side that would exceed the budget is capped.
    """
    scale = math.sqrt(max_patches * patch_size * patch_size / (width * height))
    rows = max(min(math.floor(scale * height / patch_size), max_patches), 1)
    cols = max(min(math.floor(scale * width / patch_size), max_patches // rows), 1)
    return rows, cols


class PatchPipeline:
    """PIL images -> packed ``pixel_values`` (see the module docstring)."""

    def __init__(self, patch_size: int, max_patches: int):
        self.patch_size = patch_size
        self.max_patches = max_patches

    def one(self, image: Image.Image) -> np.ndarray:
        """One image -> ``float32 [max_patches, 4 + 3 p^2]``."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        p = self.patch_size
        rows, cols = patch_grid(image.width, image.height, p, self.max_patches)
        if image.size != (cols * p, rows * p):
            image = image.resize((cols * p, rows * p), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # [rows*p, cols*p, 3]
        patches = pixels.reshape(rows, p, cols, p, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, p * p * 3)
        out = np.zeros((self.max_patches, ID_CHANNELS + p * p * 3), dtype=np.float32)
        row_ids = np.repeat(np.arange(1, rows + 1), cols)
        col_ids = np.tile(np.arange(1, cols + 1), rows)
        n = rows * cols
        out[:n, 0], out[:n, 1] = np.divmod(row_ids, _BASE)
        out[:n, 2], out[:n, 3] = np.divmod(col_ids, _BASE)
        out[:n, ID_CHANNELS:] = patches
        return out

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.one(im) for im in images]))


def unpack_ids(pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column ids ``long [B, max_patches]`` (0 = padding) from packed ``pixel_values``."""
    digits = pixel_values[..., :ID_CHANNELS].float().round().long()
    return digits[..., 0] * _BASE + digits[..., 1], digits[..., 2] * _BASE + digits[..., 3]


class PatchEncoder(nn.Module):
    """``pixel_values [B, max_patches, 4 + 3 p^2]`` -> ``[B, max_patches, hidden_size]``:
    ``LayerNorm(W x + row_embedding[r] + col_embedding[c])`` per slot (padding slots: id 0)."""

    image_processor = None
    weights_source = None
    #: Read by the PEFT methods: nothing here is pretrained, so it trains even when the tower is frozen.
    trains_from_scratch = True

    def __init__(self, patch_size: int, max_patches: int, hidden_size: int, layer_norm: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.max_patches = max_patches
        self.hidden_size = hidden_size
        self.num_patches = max_patches
        self.pipeline = PatchPipeline(patch_size, max_patches)
        self.projection = nn.Linear(3 * patch_size * patch_size, hidden_size)
        self.row_embedding = nn.Embedding(max_patches + 1, hidden_size)
        self.col_embedding = nn.Embedding(max_patches + 1, hidden_size)
        self.norm: nn.Module = nn.LayerNorm(hidden_size) if layer_norm else nn.Identity()
        for table in (self.row_embedding, self.col_embedding):
            nn.init.normal_(table.weight, std=0.02)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return self.pipeline(images)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        width = ID_CHANNELS + 3 * self.patch_size**2
        if pixel_values.dim() != 3 or tuple(pixel_values.shape[1:]) != (self.max_patches, width):
            raise ValueError(
                f"pixel_values are {tuple(pixel_values.shape)}; the patches encoder takes "
                f"[images, {self.max_patches}, {width}] (use its preprocess())"
            )
        rows, cols = unpack_ids(pixel_values)
        dtype = self.projection.weight.dtype
        x = self.projection(pixel_values[..., ID_CHANNELS:].to(dtype))
        return self.norm(x + self.row_embedding(rows) + self.col_embedding(cols))


def build(config: Any, ctx: Any) -> PatchEncoder:
    """A fresh projection in float32, trained like a connector (there are no pretrained weights)."""
    return PatchEncoder(config.patch_size, config.max_patches, config.hidden_size, config.layer_norm)
