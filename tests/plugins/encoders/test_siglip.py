"""The ``siglip`` vision encoder: no CLS token, feature layer and final LayerNorm, ``image_resolution``
(position interpolation against a hand-interpolated reference), adaptive patch pooling against block
means, the PIL/numpy pipeline against transformers' ``SiglipImageProcessorPil``, loading from a saved
directory and from a full SigLIP checkpoint, detection, and the guide's document recipe keys."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

from vlmplug.plugins.encoders import siglip as siglip_plugin
from vlmplug.plugins.encoders._siglip import SiglipImagePipeline, SiglipVisionTower

# the tiny tower of the spec's test_options: 32 px images, 8 px patches -> a 4 x 4 grid, width 32, 2 layers
OPTIONS: dict[str, Any] = dict(siglip_plugin.SPEC.test_options)
GRID = 32 // 8
WIDTH = 32


def make_siglip(ctx: Any, seed: int = 0, **options: Any) -> SiglipVisionTower:
    from vlmplug.testing import tiny

    torch.manual_seed(seed)
    return tiny.build(siglip_plugin.SPEC, ctx, {**OPTIONS, **options}).eval()


def _pixels(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# -- shapes and features ------------------------------------------------------------------------


def test_tiny_tower_has_no_cls(ctx):
    tower = make_siglip(ctx)
    assert isinstance(tower, SiglipVisionTower)
    assert isinstance(tower.model, SiglipVisionModel)
    assert tower.weights_source is None  # random init: saved with the model
    assert not hasattr(tower.model, "head")  # the attention-pooling head is never built
    with torch.no_grad():
        feats = tower(_pixels(3))
    assert feats.shape == (3, GRID * GRID, WIDTH)
    assert (tower.num_patches, tower.hidden_size, tower.image_size) == (GRID * GRID, WIDTH, 32)
    assert tower.drop_cls is False  # nothing to drop: LLaVA's "full" strategy


@pytest.mark.parametrize("layer", [-1, -2])
def test_feature_layer_is_that_hidden_state_before_the_final_layernorm(ctx, layer):
    tower = make_siglip(ctx, feature_layer=layer)
    pixels = _pixels(2)
    with torch.no_grad():
        raw = tower.model(pixel_values=pixels, output_hidden_states=True)
        feats = tower(pixels)
    # hidden_states = (embeddings, layer 1, layer 2); every position is a patch
    assert len(raw.hidden_states) == 3
    torch.testing.assert_close(feats, raw.hidden_states[layer], rtol=0, atol=0)
    assert not torch.allclose(feats, raw.last_hidden_state)


def test_post_layernorm_gives_last_hidden_state(ctx):
    tower = make_siglip(ctx, post_layernorm=True)
    pixels = _pixels(2)
    with torch.no_grad():
        ref = tower.model(pixel_values=pixels).last_hidden_state  # what PaliGemma / Idefics2 read
        torch.testing.assert_close(tower(pixels), ref, rtol=0, atol=0)


def test_bad_feature_layers_are_rejected():
    with pytest.raises(ValueError, match="feature_layer"):
        siglip_plugin.SPEC.make_config({"feature_layer": 0})
    with pytest.raises(ValueError, match="out of range"):
        siglip_plugin.SPEC.make_config({**OPTIONS, "feature_layer": -3})  # 2 tiny layers


def test_offers_patch_grid_always():
    spec = siglip_plugin.SPEC
    for options in ({}, {"patch_pooling": "adaptive"}, {"image_resolution": 768, "patch_pooling": "adaptive"}):
        needs, offers = spec.needs_and_offers(spec.make_config(options))
        assert (needs, offers) == (set(), {"patch-grid"})


# -- image_resolution: interpolated position embeddings ------------------------------------------


@pytest.mark.parametrize(
    "resolution, grid",
    [(32, 4), (48, 6), (64, 8), (16, 2), (44, 5)],  # 44 px: 5 patches of 8 px, 4 px unused (floor, as the conv)
)
def test_shapes_at_several_resolutions(ctx, resolution, grid):
    tower = make_siglip(ctx, image_resolution=resolution)
    assert (tower.image_size, tower.grid_size, tower.num_patches) == (resolution, grid, grid * grid)
    pixels = tower.preprocess([_random_image(40, 30), _random_image(24, 48, seed=1)])
    assert pixels.shape == (2, 3, resolution, resolution)
    with torch.no_grad():
        assert tower(pixels).shape == (2, grid * grid, WIDTH)
    assert tower.image_processor.size.height == tower.image_processor.size.width == resolution


def test_pretrained_resolution_gives_exactly_the_uninterpolated_features(ctx):
    plain = make_siglip(ctx)
    same = make_siglip(ctx, image_resolution=32)
    assert same.interpolate_pos_encoding and not plain.interpolate_pos_encoding
    pixels = _pixels(2)
    with torch.no_grad():
        torch.testing.assert_close(same(pixels), plain(pixels), rtol=0, atol=0)


def test_interpolation_matches_a_tower_with_hand_interpolated_positions(ctx):
    tower = make_siglip(ctx, image_resolution=64)
    table = tower.model.embeddings.position_embedding.weight.detach()  # [16, D]: the pretrained 4 x 4 grid
    grid = table.reshape(1, GRID, GRID, WIDTH).permute(0, 3, 1, 2)
    wide = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(64, -1)
    cfg = SiglipVisionConfig(**{**tower.model.config.to_dict(), "image_size": 64})
    ref = SiglipVisionModel(cfg).eval()
    state = {**tower.model.state_dict(), "embeddings.position_embedding.weight": wide}
    ref.load_state_dict(state)
    pixels = _pixels(2, size=64)
    with torch.no_grad():
        expected = ref(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(tower(pixels), expected, rtol=1e-5, atol=1e-5)


def test_wrong_pixel_size_is_named(ctx):
    tower = make_siglip(ctx, image_resolution=48)
    with pytest.raises(ValueError, match="runs at 48 x 48"):
        tower(_pixels(1, size=32))


# -- patch pooling --------------------------------------------------------------------------------


def test_adaptive_pooling_is_the_mean_of_each_block(ctx):
    full = make_siglip(ctx, image_resolution=64)  # 8 x 8 grid
    pooled = make_siglip(ctx, image_resolution=64, patch_pooling="adaptive", pooled_grid=4)
    assert (full.num_patches, pooled.num_patches) == (64, 16)
    pixels = _pixels(2, size=64)
    with torch.no_grad():
        grid = full(pixels).reshape(2, 8, 8, WIDTH)
        out = pooled(pixels)
    assert out.shape == (2, 16, WIDTH)
    for i in range(4):
        for j in range(4):
            block = grid[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(1, 2))
            torch.testing.assert_close(out[:, 4 * i + j], block, rtol=1e-5, atol=1e-6)


def test_adaptive_pooling_uneven_grid_keeps_the_shape(ctx):
    full = make_siglip(ctx, image_resolution=64)
    pooled = make_siglip(ctx, image_resolution=64, patch_pooling="adaptive", pooled_grid=3)
    pixels = _pixels(1, size=64)
    with torch.no_grad():
        grid = full(pixels).reshape(1, 8, 8, WIDTH)
        out = pooled(pixels)
    assert out.shape == (1, 9, WIDTH) and pooled.num_patches == 9
    # the corner bins: rows / columns 0..2 and 5..7 (floor(i * 8 / 3) .. ceil((i + 1) * 8 / 3))
    torch.testing.assert_close(out[:, 0], grid[:, 0:3, 0:3].mean(dim=(1, 2)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[:, 8], grid[:, 5:8, 5:8].mean(dim=(1, 2)), rtol=1e-5, atol=1e-6)


def test_default_pooled_grid_keeps_the_pretrained_budget(ctx):
    tower = make_siglip(ctx, image_resolution=64, patch_pooling="adaptive")
    assert (tower.grid_size, tower.pooled_grid, tower.num_patches) == (8, GRID, GRID * GRID)
    with torch.no_grad():
        assert tower(tower.preprocess([_random_image(50, 70)])).shape == (1, GRID * GRID, WIDTH)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"patch_pooling": "adaptive", "pooled_grid": 5}, "pooled_grid: 5 is larger than the 4 x 4 patch grid"),
        ({"image_resolution": 48, "patch_pooling": "adaptive", "pooled_grid": 7}, "choose pooled_grid <= 6"),
        ({"pooled_grid": 2}, "patch_pooling is 'none'; add patch_pooling: adaptive"),
        ({"image_resolution": 4}, "smaller than one 8 px patch"),
        ({"image_resolution": -32}, "image_resolution: must be a positive"),
    ],
)
def test_impossible_grid_options_are_rejected_when_the_recipe_resolves(options, match):
    with pytest.raises(ValueError, match=match):
        siglip_plugin.SPEC.make_config({**OPTIONS, **options})


def test_grid_options_of_a_hub_tower_are_checked_when_it_loads(ctx, tmp_path):
    make_siglip(ctx).save_pretrained(tmp_path / "tower")
    options = {"model": str(tmp_path / "tower"), "patch_pooling": "adaptive", "pooled_grid": 9}
    config = siglip_plugin.SPEC.make_config(options)  # the patch size is not known before loading
    with pytest.raises(ValueError, match="pooled_grid: 9 is larger than the 4 x 4 patch grid"):
        siglip_plugin.SPEC.load_factory()(config, ctx)


# -- loading through from_pretrained -----------------------------------------------------------


def test_save_then_load_from_path_gives_identical_features(ctx, tmp_path):
    tower = make_siglip(ctx)
    tower.save_pretrained(tmp_path / "tower")
    assert (tmp_path / "tower" / "config.json").is_file()
    assert (tmp_path / "tower" / "preprocessor_config.json").is_file()

    from vlmplug.testing import tiny

    loaded = tiny.build(siglip_plugin.SPEC, ctx, {"model": str(tmp_path / "tower")}).eval()
    assert loaded.weights_source == str(tmp_path / "tower")
    assert (loaded.num_patches, loaded.hidden_size, loaded.pipeline.size) == (GRID * GRID, WIDTH, (32, 32))
    assert loaded.model.state_dict().keys() == tower.model.state_dict().keys()
    for name, value in tower.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[name]), name
    pixels = _pixels(2)
    image = _random_image(40, 30)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), tower(pixels), rtol=0, atol=0)
    torch.testing.assert_close(loaded.preprocess([image]), tower.preprocess([image]), rtol=0, atol=0)

    # the same directory at a higher resolution, pooled back to the pretrained budget
    wide = tiny.build(
        siglip_plugin.SPEC, ctx, {"model": str(tmp_path / "tower"), "image_resolution": 64, "patch_pooling": "adaptive"}
    ).eval()
    ref = make_siglip(ctx, image_resolution=64, patch_pooling="adaptive")
    pixels = _pixels(2, size=64)
    with torch.no_grad():
        torch.testing.assert_close(wide(pixels), ref(pixels), rtol=0, atol=0)


def test_full_siglip_checkpoint_loads_the_vision_tower_only(ctx, tmp_path):
    from transformers import SiglipConfig, SiglipModel

    from vlmplug.testing import tiny

    torch.manual_seed(0)
    cfg = SiglipConfig(
        text_config=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64
        ),
        vision_config=dict(
            hidden_size=WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
    )
    full = SiglipModel(cfg).eval()
    full.save_pretrained(tmp_path / "siglip")
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "siglip")

    tower = tiny.build(siglip_plugin.SPEC, ctx, {"model": str(tmp_path / "siglip")}).eval()
    assert (tower.num_patches, tower.hidden_size) == (GRID * GRID, WIDTH)
    assert not any(n.startswith(("text_model", "head")) for n, _ in tower.model.named_parameters())
    pixels = _pixels(2)
    with torch.no_grad():
        ref = full.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(tower(pixels), ref, rtol=0, atol=0)


# -- the image pipeline against transformers' SiglipImageProcessorPil ----------------------------

# rescale + normalise are folded into one affine map here; float32 rounding differs by ~1e-7
ATOL = 1e-5


def _compare(images: list[Image.Image], processor: SiglipImageProcessorPil) -> None:
    ours = SiglipImagePipeline(processor)(images)
    ref = processor(images, return_tensors="pt")["pixel_values"]
    assert ours.dtype == torch.float32
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=ATOL)


def _processor(size: int = 32, **kwargs: Any) -> SiglipImageProcessorPil:
    return SiglipImageProcessorPil(size={"height": size, "width": size}, **kwargs)


def test_processor_defaults_are_siglips():
    p = SiglipImageProcessorPil()
    assert (tuple(p.image_mean), tuple(p.image_std), int(p.resample)) == ((0.5,) * 3, (0.5,) * 3, 3)
    _compare([_random_image(300, 200, seed=2)], p)  # 224 x 224, bicubic, no crop


@pytest.mark.parametrize(
    "size", [(32, 32), (48, 32), (32, 45), (20, 70), (100, 9), (33, 33)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_pipeline_resizes_without_crop_like_hf(size):
    _compare([_random_image(*size, seed=3)], _processor())


@pytest.mark.parametrize(
    "resample", [0, 1, 2, 3, 4, 5], ids=["nearest", "lanczos", "bilinear", "bicubic", "box", "hamming"]
)
def test_pipeline_honours_the_resample_filter(resample):
    _compare([_random_image(64, 40, seed=8)], _processor(resample=resample))


def test_pipeline_converts_non_rgb_and_stacks_batches():
    grey = Image.fromarray(np.random.default_rng(5).integers(0, 256, (30, 48), dtype=np.uint8), mode="L")
    opaque = _random_image(64, 64, seed=6).convert("RGBA")  # alpha 255: HF's white compositing changes nothing
    _compare([grey, opaque, _random_image(16, 16)], _processor())


def test_pipeline_at_image_resolution_matches_hf_at_that_size(ctx):
    tower = make_siglip(ctx, image_resolution=48)
    image = _random_image(70, 40, seed=9)
    ref = _processor(48)([image], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(tower.preprocess([image]), ref, rtol=0, atol=ATOL)


def test_processor_saved_with_the_model_has_the_resolution(ctx, tmp_path):
    tower = make_siglip(ctx, image_resolution=48)
    tower.image_processor.save_pretrained(tmp_path / "processor")
    reloaded = SiglipImageProcessorPil.from_pretrained(tmp_path / "processor")
    assert (reloaded.size.height, reloaded.size.width) == (48, 48)
    image = _random_image(50, 61, seed=4)
    torch.testing.assert_close(
        tower.preprocess([image]), reloaded([image], return_tensors="pt")["pixel_values"], rtol=0, atol=ATOL
    )


# -- a whole model saved and loaded with vlmplug.load -------------------------------------------


def test_vlm_with_pooled_high_resolution_siglip_reloads(tiny, tokenizer, ctx, tmp_path):
    from vlmplug.manager import load
    from vlmplug.testing.conformance import _check_reload

    options = {**OPTIONS, "image_resolution": 48, "patch_pooling": "adaptive", "pooled_grid": 3}
    vlm = tiny.make_vlm(tokenizer, ctx, encoder="siglip", encoder_options=options)
    assert vlm.vision_encoder.num_patches == 9 and vlm.tokens_per_image == 9
    batch = tiny.make_batch(vlm, tokenizer, (1, 2), seed=1)
    assert batch["pixel_values"].shape == (3, 3, 48, 48)
    reg = load().registry
    families = {"vision_encoder": (reg.get("siglip"), options), "connector": (reg.get("mlp"), {})}
    _check_reload(vlm, batch, tmp_path, reg.get("interleaved"), families=families)
    processor = SiglipImageProcessorPil.from_pretrained(tmp_path / "model" / "processor")
    assert (processor.size.height, processor.size.width) == (48, 48)


# -- detection and recipes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, config, expected",
    [
        ("google/siglip-so400m-patch14-384", None, "siglip"),
        ("google/siglip-base-patch16-224", None, "siglip"),
        ("google/siglip2-so400m-patch14-384", None, "siglip"),  # fixed-resolution SigLIP 2: SigLIP's classes
        ("google/siglip2-base-patch16-naflex", None, None),  # NaFlex: another architecture
        ("openai/clip-vit-large-patch14-336", None, None),
        ("/models/any-name", {"model_type": "siglip"}, "siglip"),
        ("/models/any-name", {"model_type": "siglip_vision_model"}, "siglip"),
        ("/models/siglip-like-name", {"model_type": "clip_vision_model"}, None),  # the config decides
    ],
)
def test_detect(model, config, expected):
    assert siglip_plugin.detect_vision_encoder(model=model, config=config) == expected


def test_detect_through_the_plugin_host(tmp_path):
    from vlmplug.manager import load

    host = load(autoload=False)
    assert host.detect_vision_encoder(model="google/siglip-so400m-patch14-384", config=None) == "siglip"
    assert host.detect_vision_encoder(model="./t", config={"model_type": "siglip_vision_model"}) == "siglip"
    assert host.detect_vision_encoder(model="openai/clip-vit-large-patch14-336", config=None) == "clip"
    assert host.registry.get("siglip") is not None and host.registry.planned("siglip") is None


def _resolve(data: dict[str, Any]) -> Any:
    from vlmplug.manager import load
    from vlmplug.recipe import resolve

    host = load(autoload=False)
    return resolve(data, host.registry, host=host, check_deps=False)


def test_document_recipe_resolves_its_encoder_keys():
    from vlmplug.errors import ConfigError
    from vlmplug.recipe import load_recipe

    data, _ = load_recipe("document")
    try:
        _resolve(dict(data))
    except ConfigError as e:  # still-planned keys (augmentation) may remain, the encoder's may not
        assert not [p for p in e.problems if any(k in p for k in ("siglip", "image_resolution", "patch_pooling"))]
    data = {k: v for k, v in data.items() if k != "augmentation"}
    resolved = _resolve(data)
    encoder = resolved.single["vision_encoder"]
    assert encoder.name == "siglip"
    assert encoder.options["model"] == "google/siglip-so400m-patch14-384"
    assert (encoder.options["image_resolution"], encoder.options["patch_pooling"]) == (768, "adaptive")
    config = encoder.config()
    assert (config.image_resolution, config.patch_pooling, config.pooled_grid) == (768, "adaptive", None)


def test_flat_keys_reach_the_selected_encoder():
    from vlmplug.recipe import load_recipe

    data, _ = load_recipe("quickstart")
    data = {**data, "vision_encoder": {"name": "siglip", **OPTIONS}, "image_resolution": 48, "pooled_grid": 3}
    data["patch_pooling"] = "adaptive"
    options = _resolve(data).single["vision_encoder"].options
    assert (options["image_resolution"], options["patch_pooling"], options["pooled_grid"]) == (48, "adaptive", 3)


def test_flat_key_problems_are_reported_when_the_recipe_resolves():
    from vlmplug.errors import ConfigError
    from vlmplug.recipe import load_recipe

    data, _ = load_recipe("quickstart")
    data = {**data, "vision_encoder": {"name": "siglip", **OPTIONS}, "patch_pooling": "adaptive", "pooled_grid": 9}
    with pytest.raises(ConfigError) as e:
        _resolve(data)
    assert any("pooled_grid: 9 is larger than the 4 x 4 patch grid" in p for p in e.value.problems), e.value.problems


def test_light_module_keeps_its_promise():
    from vlmplug.testing.conformance import check_light_module

    check_light_module("vlmplug.plugins.encoders.siglip")
