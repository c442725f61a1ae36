"""The ``clip`` vision encoder: feature shapes and layer choice, ``image_resolution`` (position
interpolation against a hand-interpolated reference) and adaptive patch pooling with the CLS token
kept or dropped, loading from a saved directory, the PIL/numpy image pipeline against transformers'
own CLIP processor, and encoder detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from vlmplug.plugins.encoders import clip as clip_plugin
from vlmplug.plugins.encoders._clip import ClipVisionTower, ImagePipeline

# the tiny tower of conftest: 32 px images, 8 px patches -> a 4 x 4 grid, width 32, 2 layers
GRID = 32 // 8
WIDTH = 32


def _pixels(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# -- shapes ---------------------------------------------------------------------------------


def test_tiny_tower_drops_cls_by_default(clip_tower):
    assert isinstance(clip_tower, ClipVisionTower)
    assert clip_tower.weights_source is None  # random init: saved with the model
    with torch.no_grad():
        feats = clip_tower(_pixels(3))
    assert feats.shape == (3, GRID * GRID, WIDTH)
    assert clip_tower.num_patches == GRID * GRID
    assert clip_tower.hidden_size == WIDTH
    assert clip_tower.image_size == 32


def test_keep_cls_adds_one_token(tiny, ctx):
    tower = tiny.make_clip(ctx, drop_cls=False)
    with torch.no_grad():
        feats = tower(_pixels(2))
    assert feats.shape == (2, GRID * GRID + 1, WIDTH)
    assert tower.num_patches == GRID * GRID + 1


def test_other_tiny_sizes(tiny, ctx):
    tower = tiny.make_clip(
        ctx, tiny_image_size=48, tiny_patch_size=16, tiny_hidden_size=24, tiny_layers=1, feature_layer=-1
    )
    with torch.no_grad():
        feats = tower(_pixels(1, size=48))
    assert feats.shape == (1, 9, 24)
    assert tower.num_patches == 9


@pytest.mark.parametrize("layer", [-1, -2])
def test_feature_layer_selects_that_hidden_state(tiny, ctx, layer):
    tower = tiny.make_clip(ctx, feature_layer=layer)
    assert isinstance(tower.model, CLIPVisionModel)
    pixels = _pixels(2)
    with torch.no_grad():
        feats = tower(pixels)
        raw = tower.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    # hidden_states = (embeddings, layer 1, layer 2): -1 is the last layer, -2 the penultimate
    assert len(raw) == 3
    torch.testing.assert_close(feats, raw[layer][:, 1:], rtol=0, atol=0)


def test_feature_layers_differ(tiny, ctx):
    last = tiny.make_clip(ctx, seed=0, feature_layer=-1)
    penultimate = tiny.make_clip(ctx, seed=0, feature_layer=-2)
    pixels = _pixels(1)
    with torch.no_grad():
        assert not torch.allclose(last(pixels), penultimate(pixels))


def test_feature_layer_out_of_range_is_rejected(tiny, ctx):
    with pytest.raises(ValueError, match="out of range"):
        tiny.make_clip(ctx, feature_layer=-3)  # the tiny tower has 2 layers
    with pytest.raises(ValueError, match="out of range"):
        tiny.make_clip(ctx, tiny_layers=1)  # -2 (the default) would be the patch embedding


def test_feature_layer_zero_is_rejected():
    with pytest.raises(ValueError, match="feature_layer"):
        clip_plugin.SPEC.make_config({"feature_layer": 0})


# -- image_resolution and patch pooling -------------------------------------------------------


@pytest.mark.parametrize("drop_cls", [True, False], ids=["drop-cls", "keep-cls"])
@pytest.mark.parametrize("resolution, grid", [(32, 4), (48, 6), (64, 8), (40, 5), (36, 4)])
def test_shapes_at_several_resolutions(tiny, ctx, resolution, grid, drop_cls):
    tower = tiny.make_clip(ctx, image_resolution=resolution, drop_cls=drop_cls)
    tokens = grid * grid + (0 if drop_cls else 1)
    assert (tower.image_size, tower.grid_size, tower.num_patches) == (resolution, grid, tokens)
    pixels = tower.preprocess([_random_image(40, 60), _random_image(32, 32, seed=9)])
    assert pixels.shape == (2, 3, resolution, resolution)
    with torch.no_grad():
        assert tower(pixels).shape == (2, tokens, WIDTH)


def test_pretrained_resolution_gives_exactly_the_uninterpolated_features(tiny, ctx):
    plain = tiny.make_clip(ctx, drop_cls=False)
    same = tiny.make_clip(ctx, drop_cls=False, image_resolution=32)
    assert same.interpolate_pos_encoding and not plain.interpolate_pos_encoding
    pixels = _pixels(2)
    with torch.no_grad():
        torch.testing.assert_close(same(pixels), plain(pixels), rtol=0, atol=0)


def test_interpolation_matches_a_tower_with_hand_interpolated_positions(tiny, ctx):
    tower = tiny.make_clip(ctx, image_resolution=48, drop_cls=False).eval()
    table = tower.model.embeddings.position_embedding.weight.detach()  # [1 + 16, D]
    patches = table[1:].reshape(1, GRID, GRID, WIDTH).permute(0, 3, 1, 2)
    wide = F.interpolate(patches, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    cfg = CLIPVisionConfig(**{**tower.model.config.to_dict(), "image_size": 48})
    ref = CLIPVisionModel(cfg).eval()
    state = dict(tower.model.state_dict())
    state["embeddings.position_embedding.weight"] = torch.cat([table[:1], wide.reshape(36, -1)])
    ref.load_state_dict(state)
    pixels = _pixels(2, size=48)
    with torch.no_grad():
        expected = ref(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # CLS position kept
        torch.testing.assert_close(tower(pixels), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("drop_cls", [True, False], ids=["drop-cls", "keep-cls"])
def test_adaptive_pooling_is_the_mean_of_each_block_with_cls_kept_aside(tiny, ctx, drop_cls):
    full = tiny.make_clip(ctx, image_resolution=64, drop_cls=False).eval()  # CLS + 8 x 8 grid
    pooled = tiny.make_clip(ctx, image_resolution=64, drop_cls=drop_cls, patch_pooling="adaptive", pooled_grid=4).eval()
    assert pooled.num_patches == 16 + (0 if drop_cls else 1)
    pixels = _pixels(2, size=64)
    with torch.no_grad():
        ref = full(pixels)
        out = pooled(pixels)
    assert out.shape == (2, pooled.num_patches, WIDTH)
    if not drop_cls:
        torch.testing.assert_close(out[:, 0], ref[:, 0], rtol=0, atol=0)  # the CLS token, untouched
        out = out[:, 1:]
    grid = ref[:, 1:].reshape(2, 8, 8, WIDTH)
    for i in range(4):
        for j in range(4):
            block = grid[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(1, 2))
            torch.testing.assert_close(out[:, 4 * i + j], block, rtol=1e-5, atol=1e-6)


def test_adaptive_pooling_uneven_grid_keeps_the_shape(tiny, ctx):
    tower = tiny.make_clip(ctx, image_resolution=40, patch_pooling="adaptive", pooled_grid=3)  # 5 x 5 -> 3 x 3
    assert (tower.grid_size, tower.num_patches) == (5, 9)
    with torch.no_grad():
        assert tower(tower.preprocess([_random_image(70, 40)])).shape == (1, 9, WIDTH)


def test_default_pooled_grid_keeps_the_pretrained_budget(tiny, ctx):
    tower = tiny.make_clip(ctx, image_resolution=64, patch_pooling="adaptive")
    assert (tower.grid_size, tower.pooled_grid, tower.num_patches) == (8, GRID, GRID * GRID)


@pytest.mark.parametrize(
    "options, offers",
    [
        ({}, {"patch-grid"}),
        ({"patch_pooling": "adaptive", "pooled_grid": 2}, {"patch-grid"}),
        ({"drop_cls": False}, set()),
        ({"drop_cls": False, "patch_pooling": "adaptive"}, set()),  # CLS in front: not a pure grid
    ],
)
def test_patch_grid_capability_follows_drop_cls(options, offers):
    spec = clip_plugin.SPEC
    assert spec.needs_and_offers(spec.make_config({**spec.test_options, **options}))[1] == offers


@pytest.mark.parametrize(
    "options, match",
    [
        ({"patch_pooling": "adaptive", "pooled_grid": 5}, "pooled_grid: 5 is larger than the 4 x 4 patch grid"),
        ({"pooled_grid": 2}, "patch_pooling is 'none'"),
        ({"image_resolution": 7}, "smaller than one 8 px patch"),
        ({"image_resolution": 0}, "image_resolution: must be a positive"),
    ],
)
def test_impossible_grid_options_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        clip_plugin.SPEC.make_config({**clip_plugin.SPEC.test_options, **options})


def test_pipeline_at_image_resolution_matches_hf_at_that_size(tiny, ctx, tmp_path):
    tower = tiny.make_clip(ctx, image_resolution=48)
    image = _random_image(70, 45, seed=9)
    torch.testing.assert_close(tower.preprocess([image]), _hf(_processor(48), image), rtol=0, atol=ATOL)
    tower.image_processor.save_pretrained(tmp_path / "processor")  # what the saved model carries
    saved = CLIPImageProcessorPil.from_pretrained(tmp_path / "processor")
    assert (saved.size.shortest_edge, saved.crop_size.height, saved.crop_size.width) == (48, 48, 48)
    torch.testing.assert_close(tower.preprocess([image]), _hf(saved, image), rtol=0, atol=ATOL)


def test_saved_tower_reloads_at_a_higher_resolution(tiny, ctx, clip_tower, tmp_path):
    clip_tower.save_pretrained(tmp_path / "tower")
    options = {"model": str(tmp_path / "tower"), "image_resolution": 64, "patch_pooling": "adaptive"}
    loaded = tiny.build(clip_plugin.SPEC, ctx, options).eval()
    ref = tiny.make_clip(ctx, image_resolution=64, patch_pooling="adaptive").eval()
    pixels = _pixels(2, size=64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), ref(pixels), rtol=0, atol=0)


# -- loading a saved tower through from_pretrained ------------------------------------------


def test_save_then_load_from_path_gives_identical_outputs(tiny, ctx, clip_tower, tmp_path):
    clip_tower.save_pretrained(tmp_path / "tower")
    assert (tmp_path / "tower" / "config.json").is_file()
    assert (tmp_path / "tower" / "preprocessor_config.json").is_file()

    loaded = tiny.build(clip_plugin.SPEC, ctx, {"model": str(tmp_path / "tower")})
    assert loaded.weights_source == str(tmp_path / "tower")
    assert loaded.num_patches == clip_tower.num_patches
    assert loaded.hidden_size == clip_tower.hidden_size
    assert loaded.pipeline.crop == clip_tower.pipeline.crop == (32, 32)
    for (name, a), (name_b, b) in zip(clip_tower.model.state_dict().items(), loaded.model.state_dict().items()):
        assert name == name_b
        assert torch.equal(a, b), name

    clip_tower.eval()
    loaded.eval()
    pixels = _pixels(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), clip_tower(pixels), rtol=0, atol=0)
    image = _random_image(40, 32)
    torch.testing.assert_close(loaded.preprocess([image]), clip_tower.preprocess([image]), rtol=0, atol=0)


def test_full_clip_checkpoint_loads_vision_tower_only(tiny, ctx, tmp_path):
    # the module docstring promises a full CLIP (text + vision) checkpoint works: the text tower is skipped
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=64,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    full = CLIPModel(cfg).eval()
    full.save_pretrained(tmp_path / "clip")
    _processor().save_pretrained(tmp_path / "clip")

    tower = tiny.build(clip_plugin.SPEC, ctx, {"model": str(tmp_path / "clip")}).eval()
    assert (tower.num_patches, tower.hidden_size) == (GRID * GRID, WIDTH)
    assert not any(n.startswith("text_model") for n, _ in tower.model.named_parameters())
    pixels = _pixels(2)
    with torch.no_grad():
        ref = full.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        torch.testing.assert_close(tower(pixels), ref, rtol=0, atol=0)


# -- the image pipeline against transformers' CLIPImageProcessorPil --------------------------

# The pipeline folds rescale+normalise into one affine map ((x - mean/scale) * scale/std) while the
# reference rescales then normalises, so float32 rounding differs by a few 1e-7 on values of
# magnitude ~2; 1e-5 leaves margin without hiding any real difference (one grey level = ~0.015).
ATOL = 1e-5


def _processor(size: int = 32) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _hf(processor: CLIPImageProcessorPil, image: Image.Image) -> torch.Tensor:
    return processor([image], return_tensors="pt")["pixel_values"]


def _compare(image: Image.Image, processor: CLIPImageProcessorPil) -> None:
    ours = ImagePipeline(processor)([image])
    ref = processor([image], return_tensors="pt")["pixel_values"]
    assert ours.dtype == torch.float32
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=ATOL)


def test_pipeline_matches_hf_at_target_size():
    _compare(_random_image(32, 32, seed=1), _processor())


def test_pipeline_matches_hf_with_default_openai_settings():
    # the processor defaults of the hub checkpoints: 224 px, bicubic, OpenAI mean/std
    _compare(_random_image(224, 224, seed=2), CLIPImageProcessorPil())


@pytest.mark.parametrize("size", [(48, 32), (32, 45), (70, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_pipeline_matches_hf_resize_and_even_crop(size):
    # resized long side minus crop is even or a multiple of 4 plus 1: both crop rules agree
    _compare(_random_image(*size, seed=3), _processor())


@pytest.mark.parametrize("size", [(32, 35), (40, 64), (50, 37)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_pipeline_matches_hf_resize_and_odd_crop(size):
    # (32, 35): no resize, 3 surplus rows -> HF crops from row (35 - 32) // 2 = 1
    # (40, 64): resized to 32 x 51, 19 surplus rows -> top row 9
    # (50, 37): resized to 43 x 32, 11 surplus columns -> left column 5
    _compare(_random_image(*size, seed=4), _processor())


@pytest.mark.parametrize("resample", [0, 1, 2, 3], ids=["nearest", "lanczos", "bilinear", "bicubic"])
def test_pipeline_honours_the_resample_filter(resample):
    # 64 x 96 -> 32 x 48 -> centre crop of 32 rows from 8: the crop rule is not in play here
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, resample=resample
    )
    _compare(_random_image(64, 96, seed=8), processor)


def test_pipeline_converts_non_rgb_and_stacks_batches():
    processor = _processor()
    grey = Image.fromarray(np.random.default_rng(5).integers(0, 256, (32, 48), dtype=np.uint8), mode="L")
    rgba = _random_image(64, 64, seed=6).convert("RGBA")
    out = ImagePipeline(processor)([grey, rgba])
    ref = processor([grey.convert("RGB"), rgba.convert("RGB")], return_tensors="pt")["pixel_values"]
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out, ref, rtol=0, atol=ATOL)


def test_tower_preprocess_feeds_forward(clip_tower):
    pixels = clip_tower.preprocess([_random_image(40, 60), _random_image(32, 32, seed=9)])
    assert pixels.shape == (2, 3, 32, 32)
    with torch.no_grad():
        assert clip_tower(pixels).shape == (2, GRID * GRID, WIDTH)


# -- detect_vision_encoder ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, expected",
    [
        ("openai/clip-vit-large-patch14-336", "clip"),
        ("openai/clip-vit-base-patch32", "clip"),
        ("google/siglip-so400m-patch14-384", None),
        ("BAAI/EVA-CLIP-8B", None),
        ("facebook/dinov2-large", None),
    ],
)
def test_detect_by_name(model, expected):
    assert clip_plugin.detect_vision_encoder(model=model, config=None) == expected


@pytest.mark.parametrize(
    "model_type, expected",
    [
        ("clip", "clip"),
        ("clip_vision_model", "clip"),
        ("siglip_vision_model", None),
        ("dinov2", None),
    ],
)
def test_detect_uses_config_model_type(model_type, expected):
    # the config decides, whatever the directory is called
    assert (
        clip_plugin.detect_vision_encoder(model="/models/clip-like-name", config={"model_type": model_type}) == expected
    )
    assert clip_plugin.detect_vision_encoder(model="/models/some-tower", config={"model_type": model_type}) == expected


def test_detect_through_the_plugin_host():
    from vlmplug.manager import load

    host = load(autoload=False)
    assert host.detect_vision_encoder(model="openai/clip-vit-large-patch14-336", config=None) == "clip"
    assert host.detect_vision_encoder(model="some/dinov2-tower", config=None) is None


def test_flat_keys_reach_clip():
    from vlmplug.manager import load
    from vlmplug.recipe import load_recipe, resolve

    host = load(autoload=False)
    data, _ = load_recipe("quickstart")
    data = {**data, "image_resolution": 48, "patch_pooling": "adaptive", "pooled_grid": 3}
    resolved = resolve(data, host.registry, host=host, check_deps=False)
    encoder = resolved.single["vision_encoder"]
    assert encoder.name == "clip"
    assert (encoder.options["image_resolution"], encoder.options["pooled_grid"]) == (48, 3)
