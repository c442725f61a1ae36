"""The shared patch-grid helpers of the ViT encoders: adaptive pooling against hand-computed block
means and bins, the grid a resolution gives, and the option checks with their messages."""

from __future__ import annotations

import math

import pytest
import torch

from vlmplug.plugins.encoders._pooling import adaptive_pool_grid, check_grid_options, grid_side, resolve_grid


def _grid_features(batch: int, side: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, side * side, dim, generator=torch.Generator().manual_seed(seed))


def _bin_mean(feats: torch.Tensor, side: int, rows: range, cols: range) -> torch.Tensor:
    grid = feats.reshape(feats.shape[0], side, side, feats.shape[-1])  # row-major patches
    return grid[:, rows.start : rows.stop, cols.start : cols.stop].mean(dim=(1, 2))


@pytest.mark.parametrize("side, out", [(8, 4), (8, 2), (6, 3), (6, 2), (4, 1)])
def test_even_division_gives_the_mean_of_each_block(side: int, out: int) -> None:
    feats = _grid_features(2, side, 5)
    pooled = adaptive_pool_grid(feats, out)
    assert pooled.shape == (2, out * out, 5)
    k = side // out
    for i in range(out):
        for j in range(out):
            block = _bin_mean(feats, side, range(i * k, (i + 1) * k), range(j * k, (j + 1) * k))
            torch.testing.assert_close(pooled[:, i * out + j], block, rtol=1e-6, atol=1e-6)


def test_a_block_mean_by_hand() -> None:
    # a 4 x 4 grid of 1-d features 0..15 pooled to 2 x 2: the means of the four 2 x 2 quadrants
    feats = torch.arange(16.0).reshape(1, 16, 1)
    pooled = adaptive_pool_grid(feats, 2)
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]  # (0+1+4+5)/4, (2+3+6+7)/4, ...


@pytest.mark.parametrize("side, out", [(8, 3), (7, 2), (5, 4), (27, 16)])
def test_uneven_division_keeps_the_shape_and_averages_overlapping_bins(side: int, out: int) -> None:
    feats = _grid_features(3, side, 4, seed=1)
    pooled = adaptive_pool_grid(feats, out)
    assert pooled.shape == (3, out * out, 4)
    # bin i spans floor(i * side / out) .. ceil((i + 1) * side / out)
    bounds = [range(i * side // out, math.ceil((i + 1) * side / out)) for i in range(out)]
    for i in (0, out - 1):
        for j in (0, out // 2, out - 1):
            torch.testing.assert_close(
                pooled[:, i * out + j], _bin_mean(feats, side, bounds[i], bounds[j]), rtol=1e-5, atol=1e-6
            )


def test_same_size_is_the_identity_and_gradients_flow() -> None:
    feats = _grid_features(1, 4, 3).requires_grad_()
    assert adaptive_pool_grid(feats, 4) is feats
    adaptive_pool_grid(feats, 2).sum().backward()
    torch.testing.assert_close(feats.grad, torch.full_like(feats, 0.25))


def test_grid_side() -> None:
    assert grid_side(729) == 27
    assert grid_side(1) == 1
    with pytest.raises(ValueError, match="square grid"):
        grid_side(17)
    with pytest.raises(ValueError, match="square grid"):
        grid_side(0)
    with pytest.raises(ValueError, match="square grid"):
        adaptive_pool_grid(torch.zeros(1, 17, 2), 2)  # e.g. CLS still in front of the patches


@pytest.mark.parametrize(
    "patch, pretrained, resolution, pooling, pooled, expected",
    [
        (14, 336, None, "none", None, (336, 24, 24)),  # CLIP ViT-L/14-336: 576 patches
        (14, 384, None, "none", None, (384, 27, 27)),  # SigLIP-so400m-patch14-384: 27 px left over
        (14, 384, 768, "none", None, (768, 54, 54)),  # the guide's document recipe, unpooled
        (14, 384, 768, "adaptive", None, (768, 54, 27)),  # default pooled grid: the pretrained one
        (14, 384, 768, "adaptive", 16, (768, 54, 16)),
        (8, 32, 16, "adaptive", None, (16, 2, 2)),  # below the pretrained resolution: capped at the grid
    ],
)
def test_resolve_grid(patch, pretrained, resolution, pooling, pooled, expected) -> None:
    assert resolve_grid(patch, pretrained, resolution, pooling, pooled) == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_resolution=0, patch_pooling="none", pooled_grid=None), "image_resolution: must be a positive"),
        (dict(image_resolution=None, patch_pooling="adaptive", pooled_grid=0), "pooled_grid: must be >= 1"),
        (dict(image_resolution=None, patch_pooling="none", pooled_grid=4), "patch_pooling is 'none'"),
        (dict(image_resolution=None, patch_pooling="max", pooled_grid=None), "patch_pooling: 'max' is not one of"),
        (
            dict(image_resolution=64, patch_pooling="adaptive", pooled_grid=9, patch_size=8, pretrained_size=32),
            r"pooled_grid: 9 is larger than the 8 x 8 patch grid at 64 px \(8 px patches\); choose pooled_grid <= 8",
        ),
        (
            dict(image_resolution=4, patch_pooling="none", pooled_grid=None, patch_size=8, pretrained_size=32),
            "smaller than one 8 px patch",
        ),
    ],
)
def test_check_grid_options_rejects(kwargs, match) -> None:
    resolution, pooling, pooled = kwargs.pop("image_resolution"), kwargs.pop("patch_pooling"), kwargs.pop("pooled_grid")
    with pytest.raises(ValueError, match=match):
        check_grid_options(resolution, pooling, pooled, **kwargs)


def test_check_grid_options_without_patch_size_checks_only_the_values() -> None:
    # a hub checkpoint: the grid is known once its config loads (build time)
    check_grid_options(768, "adaptive", 64, patch_size=None)
    check_grid_options(None, "none", None)


def test_pooling_module_is_light() -> None:
    from vlmplug.testing.conformance import check_light_module

    check_light_module("vlmplug.plugins.encoders._pooling")
