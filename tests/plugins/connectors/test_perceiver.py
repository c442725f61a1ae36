"""The ``perceiver`` connector: Flamingo / Idefics2 Perceiver Resampler, fixed token budget, time embeddings."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers.models.idefics2.modeling_idefics2 import Idefics2MLP, Idefics2PerceiverResampler

from vlmplug.manager import load
from vlmplug.plugins.connectors import perceiver
from vlmplug.plugins.connectors._perceiver import PerceiverResampler
from vlmplug.recipe import resolve
from vlmplug.testing import TINY_RECIPE, check_component

B, N, D, H = 2, 16, 32, 48
SMALL = {"num_query_tokens": 8, "depth": 2, "heads": 2, "head_dim": 8}


def _build(tiny, ctx, options=None, n=N):
    torch.manual_seed(0)
    return tiny.build(perceiver.SPEC, ctx, {**SMALL, **(options or {})}, in_dim=D, out_dim=H, num_input_tokens=n)


def test_defaults_follow_idefics2(tiny, ctx):
    config = perceiver.PerceiverConfig()
    assert (config.num_query_tokens, config.depth, config.heads, config.head_dim) == (64, 3, 16, 96)
    assert (config.max_frames, config.projection) == (None, "mlp")
    conn = tiny.build(perceiver.SPEC, ctx, in_dim=D, out_dim=H, num_input_tokens=N)
    assert conn.num_tokens == 64
    assert conn.max_frames == ctx.max_num_frames == 8  # unset: the run's max_num_frames (the guide's 8)
    assert conn.time_embedding.shape == (8, D)
    assert isinstance(conn.perceiver_resampler, Idefics2PerceiverResampler)
    assert len(conn.perceiver_resampler.layers) == 3
    assert isinstance(conn.modality_projection, Idefics2MLP)
    attn = conn.perceiver_resampler.layers[0].self_attn
    assert (attn.num_heads, attn.head_dim, attn.num_key_value_heads) == (16, 96, 16)


@pytest.mark.parametrize("n", [16, 10, 1, 50])  # 10 and 50 are not squares
@pytest.mark.parametrize("b", [1, 3])
def test_output_length_is_num_query_tokens_for_any_n(tiny, ctx, n, b):
    conn = _build(tiny, ctx, n=n)
    out = conn(torch.randn(b, n, D))
    assert out.shape == (b, 8, H)
    assert conn.num_tokens == 8
    assert torch.isfinite(out).all()


def test_latents_differ_so_tokens_differ(tiny, ctx):
    """Idefics2 initialises the latents to ones (all tokens equal); ours are random (Flamingo)."""
    conn = _build(tiny, ctx)
    out = conn(torch.randn(1, N, D))[0]
    assert not torch.allclose(out[0], out[1], atol=1e-3)


def test_is_the_idefics2_connector_composition(tiny, ctx):
    """projection -> transformers' resampler with an all-ones context mask, nothing else (single
    images: ``max_frames: 1``, no time embedding)."""
    conn = _build(tiny, ctx, {"max_frames": 1})
    x = torch.randn(B, N, D)
    ref = conn.perceiver_resampler(context=conn.modality_projection(x), attention_mask=torch.ones(B, N))
    torch.testing.assert_close(conn(x), ref)


def test_linear_projection_option(tiny, ctx):
    conn = _build(tiny, ctx, {"projection": "linear"})
    assert isinstance(conn.modality_projection, nn.Linear)
    assert (conn.modality_projection.in_features, conn.modality_projection.out_features) == (D, H)
    assert conn(torch.randn(B, N, D)).shape == (B, 8, H)


@pytest.mark.parametrize("options", [{}, {"max_frames": 3}], ids=["image", "video"])
def test_gradients_reach_every_trainable_parameter(tiny, ctx, options):
    conn = _build(tiny, ctx, options)
    x = torch.randn(B, 3, N, D) if options else torch.randn(B, N, D)
    conn(x).pow(2).mean().backward()
    for name, p in conn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_multi_frame_input_is_resampled_to_the_same_budget(tiny, ctx):
    conn = _build(tiny, ctx, {"max_frames": 4})
    assert conn.time_embedding.shape == (4, D)
    for frames in (1, 3, 4):
        assert conn(torch.randn(B, frames, N, D)).shape == (B, 8, H)


def test_frames_are_flattened_in_order_with_their_time_embedding(tiny, ctx):
    conn = _build(tiny, ctx, {"max_frames": 3})
    x = torch.randn(B, 3, N, D)
    context = (x + conn.time_embedding[:, None, :]).reshape(B, 3 * N, D)
    ref = conn.perceiver_resampler(context=conn.modality_projection(context), attention_mask=torch.ones(B, 3 * N))
    torch.testing.assert_close(conn(x), ref)


def test_time_embedding_makes_frame_order_matter(tiny, ctx):
    conn = _build(tiny, ctx, {"max_frames": 3})
    x = torch.randn(B, 3, N, D)
    swapped = x[:, [1, 0, 2]]
    with torch.no_grad():
        assert not torch.allclose(conn(x), conn(swapped), atol=1e-4)
        # without time information the resampler is blind to order: attention over a set
        conn.time_embedding.zero_()
        torch.testing.assert_close(conn(x), conn(swapped), atol=1e-5, rtol=1e-5)


def test_single_image_is_frame_zero_of_a_video(tiny, ctx):
    conn = _build(tiny, ctx, {"max_frames": 2})
    x = torch.randn(B, N, D)
    torch.testing.assert_close(conn(x), conn(x[:, None]))


def test_too_many_frames_and_bad_shapes_are_rejected(tiny, ctx):
    conn = _build(tiny, ctx, {"max_frames": 1})  # no time embedding, one frame allowed
    assert conn(torch.randn(B, 1, N, D)).shape == (B, 8, H)
    with pytest.raises(ValueError, match="max_frames"):
        conn(torch.randn(B, 2, N, D))
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        conn(torch.randn(N, D))


@pytest.mark.parametrize("key", ["num_query_tokens", "depth", "heads", "head_dim", "max_frames"])
def test_options_below_one_are_rejected(key):
    with pytest.raises(ValueError, match=key):
        perceiver.SPEC.make_config({key: 0})


def test_conformance():
    assert check_component(perceiver.SPEC)["num_tokens"] == perceiver.SPEC.test_options["num_query_tokens"]


def test_spec_names_and_keys():
    assert perceiver.SPEC.aliases == ("perceiver_resampler", "perceiver-resampler")
    assert perceiver.SPEC.flat_keys == ("num_query_tokens",)
    assert perceiver.SPEC.activated("perceiver_resampler", True)
    assert not perceiver.SPEC.activated("perceiver_resampler", False)


@pytest.mark.parametrize(
    "keys",
    [
        {"alignment": "perceiver_resampler", "num_query_tokens": 64},  # the guide's video recipe
        {"perceiver_resampler": True, "num_query_tokens": 64},
        {"connector": "perceiver-resampler", "num_query_tokens": 64},
    ],
)
def test_guide_keys_resolve_to_perceiver(keys):
    host = load()
    data = {k: v for k, v in copy.deepcopy(TINY_RECIPE).items() if k != "connector"}
    resolved = resolve({**data, **keys}, host.registry, host=host)
    sel = resolved.single["connector"]
    assert sel.name == "perceiver"
    assert sel.config().num_query_tokens == 64


def test_trains_end_to_end_and_loads_back(run_recipe):
    import vlmplug

    result = run_recipe(steps=3, plugins=("perceiver",), num_query_tokens=16)  # the tiny recipe has 48 positions
    assert result.metrics["status"] == "finished"
    assert result.metrics["train"]["steps"] == 3
    assert torch.isfinite(torch.tensor(result.metrics["train"]["final_loss"]))
    conn = result.model.connector
    assert isinstance(conn, PerceiverResampler) and conn.num_tokens == 16
    loaded = vlmplug.load(result.run_dir)
    assert isinstance(loaded.connector, PerceiverResampler)
    result.model.eval()
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(pixels), result.model.encode_images(pixels))
