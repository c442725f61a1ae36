"""``eva-clip``: EVA-02 towers through timm. Without timm (the main venv: timm's torchvision does not
run beside the CPU torch) the component lists, says what is missing and fails before anything loads;
with timm (``.ci/run``'s eva-clip lane) the tower is checked against timm itself: the feature layer
against the blocks' outputs and the final norm, the PIL pipeline against timm's eval transform,
loading from a directory timm saved, ``image_resolution`` and pooling."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from vlmplug import deps
from vlmplug.cli import cli
from vlmplug.plugins.encoders import eva_clip as eva_plugin

HAVE_TIMM = not deps.missing_extras(eva_plugin.SPEC)
OPTIONS: dict[str, Any] = dict(eva_plugin.SPEC.test_options)  # 32 px, 8 px patches -> 4 x 4 grid, width 32


# -- without the extra ----------------------------------------------------------------------------


@pytest.mark.skipif(HAVE_TIMM, reason="timm is installed: the missing-extra path cannot be seen")
def test_without_timm_it_lists_explains_and_fails_early() -> None:
    runner = CliRunner()
    out = " ".join(runner.invoke(cli, ["info", "eva-clip"], catch_exceptions=False).output.split())
    assert "timm" in out and 'pip install "vlmplug[eva-clip]"' in out
    result = runner.invoke(cli, ["config", "--plugins", "eva-clip"])
    assert result.exit_code != 0
    assert 'eva-clip needs timm, which is not installed: pip install "vlmplug[eva-clip]"' in " ".join(
        result.output.split()
    )


def test_detection_names_eva_clip_for_eva02_ids() -> None:
    for model in ("timm/eva02_large_patch14_clip_336.merged2b", "eva02_base_patch16_clip_224", "BAAI/EVA-CLIP-8B"):
        assert eva_plugin.detect_vision_encoder(model=model, config=None) == "eva-clip"
    assert eva_plugin.detect_vision_encoder(model="openai/clip-vit-large-patch14", config=None) is None
    assert eva_plugin.detect_vision_encoder(model="x", config={"architecture": "eva02_tiny_patch14_224"}) == "eva-clip"


# -- with timm ------------------------------------------------------------------------------------

needs_timm = pytest.mark.skipif(not HAVE_TIMM, reason='needs timm: pip install "vlmplug[eva-clip]"')


def _tower(ctx: Any, seed: int = 0, **options: Any) -> Any:
    import torch

    from vlmplug.testing import tiny

    torch.manual_seed(seed)
    return tiny.build(eva_plugin.SPEC, ctx, {**OPTIONS, **options}).eval()


def _pixels(n: int = 2, size: int = 32) -> Any:
    import torch

    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@needs_timm
@pytest.mark.parametrize("layer", [-1, -2])
def test_feature_layer_is_that_blocks_output(ctx: Any, layer: int) -> None:
    import torch

    tower = _tower(ctx, feature_layer=layer, drop_cls=False)
    seen: list[Any] = []
    handle = tower.model.blocks[layer].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        feats = tower(_pixels())
        tower.model.forward_features(_pixels())  # the reference pass, hooked
    handle.remove()
    assert feats.shape == (2, 16 + 1, 32) and tower.num_patches == 17
    torch.testing.assert_close(feats, seen[-1])
    if layer == -1:  # the last block, normed, is timm's forward_features
        with torch.no_grad():
            torch.testing.assert_close(tower.model.norm(feats), tower.model.forward_features(_pixels()))


@needs_timm
def test_drop_cls_keeps_the_patch_grid(ctx: Any) -> None:
    import torch

    full, dropped = _tower(ctx, drop_cls=False), _tower(ctx)
    with torch.no_grad():
        assert torch.equal(dropped(_pixels()), full(_pixels())[:, 1:])
    assert dropped.num_patches == 16 and eva_plugin.capabilities(eva_plugin.SPEC.make_config(OPTIONS)) == {
        "offers": ["patch-grid"]
    }


@needs_timm
def test_pipeline_matches_timms_eval_transform(ctx: Any) -> None:
    import numpy as np
    import timm
    import torch
    from PIL import Image

    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=0)
    from vlmplug.plugins.encoders._eva_clip import EvaClipTower

    tower = EvaClipTower(model, -1, True, None)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    rng = np.random.default_rng(0)
    for w, h in [(300, 200), (180, 260), (224, 224)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ours, theirs = tower.preprocess([image])[0], transform(image)
        assert ours.shape == theirs.shape == (3, 224, 224)
        torch.testing.assert_close(ours, theirs, atol=2e-2, rtol=0)  # uint8 rounding of the resized image


@needs_timm
def test_loads_from_a_directory_timm_saved(ctx: Any, tmp_path: Any) -> None:
    import torch

    tower = _tower(ctx)
    tower.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    loaded = _tower(ctx, seed=1, model=str(tmp_path))
    assert loaded.weights_source == str(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(_pixels()), tower(_pixels()))


@needs_timm
def test_image_resolution_and_pooling(ctx: Any) -> None:
    import torch

    tower = _tower(ctx, image_resolution=48)
    assert (tower.image_size, tower.grid_size, tower.num_patches) == (48, 6, 36)
    with torch.no_grad():
        assert tower(_pixels(size=48)).shape == (2, 36, 32)
        with pytest.raises(ValueError, match="runs at 48 x 48"):
            tower(_pixels(size=32))
    pooled = _tower(ctx, patch_pooling="adaptive", pooled_grid=2)
    plain = _tower(ctx)
    with torch.no_grad():
        grid = plain(_pixels()).reshape(2, 2, 2, 2, 2, 32)  # [B, 2 rows x 2, 2 cols x 2, D]
        torch.testing.assert_close(pooled(_pixels()), grid.mean(dim=(2, 4)).reshape(2, 4, 32))


@needs_timm
def test_an_unknown_timm_name_is_refused(ctx: Any) -> None:
    with pytest.raises(ValueError, match="timm has no model 'eva03_huge'"):
        _tower(ctx, model="eva03_huge")
