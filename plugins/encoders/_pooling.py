"""Patch-grid helpers shared by the ViT encoders (``clip``, ``siglip``): the grid a resolution gives,
the checks of the ``image_resolution`` / ``patch_pooling`` / ``pooled_grid`` options, and adaptive
average pooling of a patch grid down to a token budget.

Adaptive average pooling splits the ``G x G`` grid into ``P x P`` bins of (nearly) equal size and
averages each (the bins of spatial pyramid pooling, He et al. 2015; PyTorch's ``AdaptiveAvgPool2d``),
as PLLaVA (Xu et al. 2024) pools CLIP patch features to a fixed token budget: bin ``i`` covers rows
``floor(i * G / P)`` to ``ceil((i + 1) * G / P)``, so when ``P`` divides ``G`` each token is the mean
of one ``G/P x G/P`` block.

The grid side follows the ViT convention of the towers themselves: a ``patch_size`` convolution with
no padding gives ``resolution // patch_size`` patches per side (SigLIP-so400m-patch14-384 has a
27 x 27 grid over 384 px, the last 6 pixel rows and columns unused), and transformers' position
interpolation targets the same size.

This module imports torch only inside :func:`adaptive_pool_grid`, so the light plugin modules use its
checks when a recipe resolves.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "RESOLUTION_HELP",
    "POOLING_HELP",
    "POOLED_GRID_HELP",
    "POOLING_MODES",
    "grid_side",
    "check_grid_options",
    "resolve_grid",
    "adaptive_pool_grid",
]

#: Help text of the ``image_resolution`` / ``patch_pooling`` / ``pooled_grid`` options of the encoders.
RESOLUTION_HELP = (
    "Run the tower at this input resolution (pixels) instead of its pretrained one, interpolating the "
    "position embeddings; images are resized to it and the grid is resolution // patch size per side."
)
POOLING_HELP = (
    "'adaptive': average-pool the patch grid to pooled_grid x pooled_grid tokens (keeps a high "
    "image_resolution within a token budget); 'none': every patch is a token."
)
POOLED_GRID_HELP = (
    "patch_pooling adaptive: tokens per side of the pooled grid (at most the patch grid's side); "
    "unset = the pretrained grid, so the pretrained token budget is kept."
)

#: ``patch_pooling`` values.
POOLING_MODES: tuple[str, ...] = ("none", "adaptive")


def grid_side(num_tokens: int) -> int:
    """The side ``G`` of a square grid of ``num_tokens`` patches; ``ValueError`` when it is not square."""
    side = math.isqrt(max(num_tokens, 0))
    if side < 1 or side * side != num_tokens:
        raise ValueError(f"{num_tokens} patch tokens do not form a square grid")
    return side


def check_grid_options(
    image_resolution: int | None,
    patch_pooling: str,
    pooled_grid: int | None,
    *,
    patch_size: int | None = None,
    pretrained_size: int | None = None,
) -> None:
    """Reject impossible ``image_resolution`` / ``patch_pooling`` / ``pooled_grid`` values (``ValueError``).

    Without ``patch_size`` (a hub checkpoint before it loads) only the values themselves are checked;
    with it (the tiny preset, or at build time), also the grid they give."""
    if patch_pooling not in POOLING_MODES:
        raise ValueError(f"patch_pooling: {patch_pooling!r} is not one of {', '.join(map(repr, POOLING_MODES))}")
    if image_resolution is not None and image_resolution < 1:
        raise ValueError(f"image_resolution: must be a positive number of pixels, got {image_resolution}")
    if pooled_grid is not None:
        if pooled_grid < 1:
            raise ValueError(f"pooled_grid: must be >= 1 (tokens per side of the pooled grid), got {pooled_grid}")
        if patch_pooling == "none":
            raise ValueError("pooled_grid is set but patch_pooling is 'none'; add patch_pooling: adaptive")
    if patch_size is not None:
        resolve_grid(patch_size, pretrained_size or patch_size, image_resolution, patch_pooling, pooled_grid)


def resolve_grid(
    patch_size: int,
    pretrained_size: int,
    image_resolution: int | None,
    patch_pooling: str,
    pooled_grid: int | None,
) -> tuple[int, int, int]:
    """``(resolution, grid, out_grid)``: the input size in pixels, the patch grid side the tower
    produces there, and the side of the grid it returns (``grid`` without pooling).

    ``pooled_grid: None`` with adaptive pooling means the pretrained grid, so raising the resolution
    keeps the pretrained token budget (capped at the grid itself)."""
    resolution = image_resolution if image_resolution is not None else pretrained_size
    grid = resolution // patch_size
    if grid < 1:
        raise ValueError(f"image_resolution: {resolution} px is smaller than one {patch_size} px patch")
    if patch_pooling != "adaptive":
        return resolution, grid, grid
    out = pooled_grid if pooled_grid is not None else min(pretrained_size // patch_size, grid)
    if out > grid:
        raise ValueError(
            f"pooled_grid: {out} is larger than the {grid} x {grid} patch grid at {resolution} px "
            f"({patch_size} px patches); choose pooled_grid <= {grid} or a higher image_resolution"
        )
    return resolution, grid, out


def adaptive_pool_grid(features: torch.Tensor, out_grid: int) -> torch.Tensor:
    """Average-pool a square patch grid ``[B, G*G, D]`` (row-major) to ``[B, P*P, D]``, ``P = out_grid``."""
    import torch.nn.functional as F

    b, n, d = features.shape
    side = grid_side(n)
    if out_grid == side:
        return features
    grid = features.transpose(1, 2).reshape(b, d, side, side)
    pooled = F.adaptive_avg_pool2d(grid, out_grid)
    return pooled.flatten(2).transpose(1, 2)
