"""Projection connectors: one LLM token per vision token (LLaVA v1 linear, LLaVA-1.5 MLP)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_ACTS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class Projector(nn.Module):
    """``[B, N, D]`` -> ``[B, N, H]``; the token budget equals the number of input tokens."""

    def __init__(self, layers: nn.Module, num_tokens: int):
        super().__init__()
        self.proj = layers
        self.num_tokens = num_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


def build_linear(config: Any, ctx: Any, *, in_dim: int, out_dim: int, num_input_tokens: int) -> Projector:
    return Projector(nn.Linear(in_dim, out_dim, bias=config.bias), num_input_tokens)


def build_mlp(config: Any, ctx: Any, *, in_dim: int, out_dim: int, num_input_tokens: int) -> Projector:
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(config.depth - 1):
        layers += [_ACTS[config.hidden_act](), nn.Linear(out_dim, out_dim)]
    return Projector(nn.Sequential(*layers), num_input_tokens)
