"""The pixel-shuffle connector module (imports torch)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class PixelShuffleConnector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_input_tokens: int, scale: int):
        super().__init__()
        grid = math.isqrt(num_input_tokens)
        if grid * grid != num_input_tokens:
            raise ValueError(
                f"pixel-shuffle needs a square patch grid, got {num_input_tokens} tokens "
                f"(drop the CLS token: drop_cls: true)"
            )
        if grid % scale:
            raise ValueError(f"pixel-shuffle: scale_factor {scale} does not divide the {grid}x{grid} patch grid")
        self.grid, self.scale = grid, scale
        self.num_tokens = (grid // scale) ** 2
        self.proj = nn.Linear(in_dim * scale * scale, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _n, d = features.shape
        g, r = self.grid, self.scale
        x = features.reshape(b, g // r, r, g // r, r, d)  # rows split into (block, offset)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, (g // r) ** 2, r * r * d)
        return self.proj(x)


def build(config: Any, ctx: Any, *, in_dim: int, out_dim: int, num_input_tokens: int) -> PixelShuffleConnector:
    return PixelShuffleConnector(in_dim, out_dim, num_input_tokens, config.scale_factor)
