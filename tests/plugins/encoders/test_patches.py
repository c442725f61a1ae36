"""The ``patches`` encoder (Fuyu's raw patches, Pix2Struct's variable resolution): the grid keeps the
aspect ratio within the budget, each slot holds exactly its block of the resized image, positions
survive a bf16 cast, layout changes the features, padding is one learned token, the projection
trains under every PEFT method and learns."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vlmplug.plugins.encoders import patches as patches_plugin
from vlmplug.plugins.encoders._patches import ID_CHANNELS, PatchEncoder, patch_grid, unpack_ids

OPTIONS: dict[str, Any] = dict(patches_plugin.SPEC.test_options)  # 8 px patches, 12 slots, width 32


def _encoder(tiny: Any, ctx: Any, seed: int = 0, **options: Any) -> PatchEncoder:
    torch.manual_seed(seed)
    enc = tiny.build(patches_plugin.SPEC, ctx, {**OPTIONS, **options})
    assert isinstance(enc, PatchEncoder)
    return enc.eval()


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(64, 32), (32, 64), (40, 40), (1000, 10), (10, 1000), (7, 5), (3000, 2000)])
@pytest.mark.parametrize("budget", [1, 12, 100, 1024])
def test_grid_keeps_aspect_ratio_within_budget(size, budget):
    w, h = size
    rows, cols = patch_grid(w, h, 16, budget)
    assert 1 <= rows * cols <= budget
    # the largest grid of that shape: one more row or column, scaled alike, would not fit the budget
    scale = math.sqrt(budget * 16 * 16 / (w * h))
    assert rows <= max(math.floor(scale * h / 16), 1) and cols <= max(math.floor(scale * w / 16), 1)
    if rows > 1 and cols > 1:  # away from the 1-patch clamp, the grid's shape is the image's
        assert abs(math.log((cols / rows) / (w / h))) < math.log(2.5)
        assert (rows + 1) * (cols + 1) > budget


def test_slots_hold_the_resized_image_row_by_row(tiny, ctx):
    enc = _encoder(tiny, ctx)
    img = _image(64, 32)  # 2:1 -> 2 x 4 patches of 8 px within 12 slots
    pixels = enc.preprocess([img])
    assert pixels.shape == (1, 12, ID_CHANNELS + 3 * 8 * 8) and pixels.dtype == torch.float32
    rows, cols = unpack_ids(pixels)
    assert rows[0].tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 0]
    assert cols[0].tolist() == [1, 2, 3, 4, 1, 2, 3, 4, 0, 0, 0, 0]
    ref = np.asarray(img.resize((32, 16), Image.Resampling.BICUBIC), dtype=np.float32) / 127.5 - 1
    for slot in range(8):
        r, c = divmod(slot, 4)
        block = ref[r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8]
        np.testing.assert_allclose(pixels[0, slot, ID_CHANNELS:].numpy(), block.reshape(-1), atol=1e-6)
    assert torch.all(pixels[0, 8:] == 0)  # padding slots: no pixels, id 0


def test_positions_survive_half_precision_at_the_largest_budget():
    enc = PatchEncoder(patch_size=1, max_patches=4096, hidden_size=8)
    for size in [(4096, 1), (1, 4096), (64, 64)]:
        pixels = enc.preprocess([Image.new("RGB", size)])
        for dtype in (torch.bfloat16, torch.float16):
            assert [torch.equal(a, b) for a, b in zip(unpack_ids(pixels.to(dtype)), unpack_ids(pixels))] == [True, True]
        rows, cols = unpack_ids(pixels)
        assert (int(rows.max()), int(cols.max())) == (size[1], size[0])


def test_layout_changes_features_and_padding_is_one_learned_token(tiny, ctx):
    enc = _encoder(tiny, ctx, max_patches=6)  # a square image -> a 2 x 2 grid and 2 padding slots
    a = Image.new("RGB", (16, 16), (255, 0, 0))
    a.paste((0, 0, 255), (0, 0, 8, 8))  # blue top-left
    b = a.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # the same patches, blue top-right
    with torch.no_grad():
        fa, fb = enc(enc.preprocess([a])), enc(enc.preprocess([b]))
    # the blue patch is slot 0 in a and slot 1 in b; same pixels, different position
    assert torch.equal(enc.preprocess([a])[0, 0, ID_CHANNELS:], enc.preprocess([b])[0, 1, ID_CHANNELS:])
    assert not torch.allclose(fa[0, 0], fb[0, 1], atol=1e-4)
    assert torch.allclose(fa[0, 4:], fb[0, 4:]) and torch.allclose(fa[0, 4], fa[0, 5])  # padding
    assert not torch.allclose(fa[0, 0], fa[0, 4])


def test_a_wrongly_shaped_input_names_the_expected_shape(tiny, ctx):
    enc = _encoder(tiny, ctx)
    with pytest.raises(ValueError, match=r"takes \[images, 12, 196\].*preprocess"):
        enc(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"max_patches": 0}, "max_patches must be between 1 and 4096"), ({"patch_size": 0}, "patch_size must be >= 1")],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        patches_plugin.SPEC.make_config({**OPTIONS, **options})


def _trainable_parts(vlm: Any) -> dict[str, bool]:
    parts = {"vision_encoder": vlm.vision_encoder, "connector": vlm.connector, "llm": vlm.llm}
    return {name: any(p.requires_grad for p in m.parameters()) for name, m in parts.items()}


def test_the_projection_trains_under_lora_and_full_unless_frozen_by_name(tiny, ctx, tokenizer):
    from vlmplug.plugins.peft import full, lora

    vlm = tiny.make_vlm(tokenizer, ctx, encoder="patches")
    tiny.build(lora.SPEC, ctx, {"lora_r": 2, "lora_dropout": 0.0}).apply(vlm)
    assert _trainable_parts(vlm) == {"vision_encoder": True, "connector": True, "llm": True}
    vlm = tiny.make_vlm(tokenizer, ctx, encoder="patches")
    tiny.build(full.SPEC, ctx, {}).apply(vlm)
    assert all(_trainable_parts(vlm).values())
    tiny.build(full.SPEC, ctx, {"freeze": ["vision_encoder"]}).apply(vlm)
    assert _trainable_parts(vlm)["vision_encoder"] is False


def test_the_projection_learns(tiny, ctx, tokenizer):
    """(Save -> load with identical outputs is the architecture matrix's check, over every combination.)"""
    from vlmplug.plugins.peft import full

    vlm = tiny.make_vlm(tokenizer, ctx, encoder="patches", connector="linear")
    tiny.build(full.SPEC, ctx, {}).apply(vlm)
    batch = tiny.make_batch(vlm, tokenizer)
    before = {k: v.detach().clone() for k, v in vlm.vision_encoder.state_dict().items()}
    opt = torch.optim.Adam([p for p in vlm.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = vlm(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(before["projection.weight"], vlm.vision_encoder.projection.weight)
