"""The ``linear`` and ``mlp`` projection connectors: one LLM-width token per vision token."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlmplug.plugins.connectors import linear, mlp
from vlmplug.plugins.connectors._projectors import Projector

B, N, D, H = 2, 16, 32, 48


def _build(tiny, ctx, spec, options=None):
    return tiny.build(spec, ctx, options, in_dim=D, out_dim=H, num_input_tokens=N)


@pytest.mark.parametrize("spec", [linear.SPEC, mlp.SPEC], ids=["linear", "mlp"])
def test_shape_and_token_budget(tiny, ctx, spec):
    proj = _build(tiny, ctx, spec)
    assert isinstance(proj, Projector)
    out = proj(torch.randn(B, N, D))
    assert out.shape == (B, N, H)
    assert proj.num_tokens == N
    # token-wise: projecting one token alone gives the same row
    x = torch.randn(B, N, D)
    torch.testing.assert_close(proj(x)[:, 3], proj(x[:, 3:4])[:, 0])


def test_linear_is_one_linear_layer(tiny, ctx):
    proj = _build(tiny, ctx, linear.SPEC)
    assert isinstance(proj.proj, nn.Linear)
    assert (proj.proj.in_features, proj.proj.out_features) == (D, H)
    assert proj.proj.bias is not None
    x = torch.randn(B, N, D)
    torch.testing.assert_close(proj(x), x @ proj.proj.weight.T + proj.proj.bias)


def test_linear_bias_option(tiny, ctx):
    proj = _build(tiny, ctx, linear.SPEC, {"bias": False})
    assert proj.proj.bias is None
    torch.testing.assert_close(proj(torch.zeros(1, N, D)), torch.zeros(1, N, H))


def test_linear_alias_projection():
    assert "projection" in linear.SPEC.aliases


def test_mlp_default_is_linear_gelu_linear(tiny, ctx):
    proj = _build(tiny, ctx, mlp.SPEC)
    layers = list(proj.proj)
    assert [type(m) for m in layers] == [nn.Linear, nn.GELU, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (D, H)
    assert (layers[2].in_features, layers[2].out_features) == (H, H)
    x = torch.randn(B, N, D)
    manual = layers[2](torch.nn.functional.gelu(layers[0](x)))
    torch.testing.assert_close(proj(x), manual)


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_mlp_depth_option(tiny, ctx, depth):
    proj = _build(tiny, ctx, mlp.SPEC, {"depth": depth})
    linears = [m for m in proj.proj if isinstance(m, nn.Linear)]
    acts = [m for m in proj.proj if isinstance(m, nn.GELU)]
    assert len(linears) == depth
    assert len(acts) == depth - 1
    assert len(proj.proj) == 2 * depth - 1
    assert proj(torch.randn(B, N, D)).shape == (B, N, H)


@pytest.mark.parametrize("act, cls", [("relu", nn.ReLU), ("silu", nn.SiLU)])
def test_mlp_activation_option(tiny, ctx, act, cls):
    proj = _build(tiny, ctx, mlp.SPEC, {"hidden_act": act})
    assert [type(m) for m in proj.proj] == [nn.Linear, cls, nn.Linear]


def test_mlp_depth_zero_rejected():
    with pytest.raises(ValueError, match="depth"):
        mlp.SPEC.make_config({"depth": 0})
