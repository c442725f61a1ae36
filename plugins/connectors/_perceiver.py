"""The Perceiver Resampler connector (Flamingo, Alayrac et al. 2022; Idefics2, Laurençon et al. 2024).

The resampler itself is transformers' ``Idefics2PerceiverResampler``, used as is rather than
re-written: ``depth`` layers in which the latents attend to ``[context; latents]`` (keys and values
from both, as in Flamingo), a SwiGLU MLP per layer, RMSNorm. It works in the LLM width ``H``, so the
features go through Idefics2's modality projection first (``Idefics2MLP``, a gated SiLU MLP, here
with hidden width ``H`` where Idefics2 uses the LLM's intermediate size -- a smaller default that
adds ``2*D*H + H*H`` parameters -- or a plain linear layer with ``projection: linear``).

Attribute names follow Idefics2's ``Idefics2Connector`` (``modality_projection``,
``perceiver_resampler``) so its weights map by name.

Two deliberate departures from Idefics2, both for training from scratch:

* the latents are drawn from N(0, 1) (Flamingo) instead of Idefics2's all-ones initialisation, under
  which all latents start identical and so give identical tokens;
* attention is plain multi-head (``num_key_value_heads = heads``) rather than Idefics2's grouped KV.

Multi-frame input ``[B, F, N, D]`` (F frames of one video, ``F <= max_frames``) gets a learned time
embedding per frame added to its features (Flamingo's time embeddings, initialised N(0, 0.02)), then
frames x patches are flattened to ``[B, F*N, D]`` and resampled together. With ``max_frames > 1`` a
single image ``[B, N, D]`` is a one-frame video (frame 0's embedding is added); with
``max_frames == 1`` there is no time embedding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.models.idefics2.configuration_idefics2 import Idefics2PerceiverConfig
from transformers.models.idefics2.modeling_idefics2 import Idefics2MLP, Idefics2PerceiverResampler


class PerceiverResampler(nn.Module):
    """``[B, N, D]`` or ``[B, F, N, D]`` -> ``[B, num_tokens, H]`` for any ``N`` (and ``F <= max_frames``)."""

    def __init__(
        self,
        modality_projection: nn.Module,
        perceiver_resampler: Idefics2PerceiverResampler,
        *,
        in_dim: int,
        max_frames: int,
    ):
        super().__init__()
        self.modality_projection = modality_projection
        self.perceiver_resampler = perceiver_resampler
        self.num_tokens = int(perceiver_resampler.n_latents)
        self.max_frames = max_frames
        self.time_embedding: nn.Parameter | None = None
        if max_frames > 1:
            self.time_embedding = nn.Parameter(torch.randn(max_frames, in_dim) * 0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() == 4:
            frames = features.shape[1]
            if frames > self.max_frames:
                raise ValueError(
                    f"perceiver: got {frames} frames but max_frames is {self.max_frames}; "
                    f"set connector option max_frames: {frames} (or more)"
                )
            if self.time_embedding is not None:
                features = features + self.time_embedding[:frames, None, :].to(features.dtype)
            features = features.flatten(1, 2)  # [B, F*N, D]
        elif features.dim() == 3:
            if self.time_embedding is not None:
                features = features + self.time_embedding[0].to(features.dtype)
        else:
            raise ValueError(f"perceiver: expected features [B, N, D] or [B, F, N, D], got {tuple(features.shape)}")
        context = self.modality_projection(features)
        mask = torch.ones(context.shape[:2], dtype=torch.long, device=context.device)
        return self.perceiver_resampler(context=context, attention_mask=mask)


def build_perceiver(config: Any, ctx: Any, *, in_dim: int, out_dim: int, num_input_tokens: int) -> PerceiverResampler:
    if config.projection == "mlp":
        projection: nn.Module = Idefics2MLP(
            hidden_size=in_dim, intermediate_size=out_dim, output_size=out_dim, hidden_act="silu"
        )
    else:
        projection = nn.Linear(in_dim, out_dim)
    resampler_config = Idefics2PerceiverConfig(
        hidden_size=out_dim,
        hidden_act="silu",
        resampler_n_latents=config.num_query_tokens,
        resampler_depth=config.depth,
        resampler_n_heads=config.heads,
        resampler_head_dim=config.head_dim,
        num_key_value_heads=config.heads,
    )
    resampler = Idefics2PerceiverResampler(resampler_config)
    with torch.no_grad():
        resampler.latents.normal_()
    max_frames = config.max_frames or int(getattr(ctx, "max_num_frames", 1) or 1)
    return PerceiverResampler(projection, resampler, in_dim=in_dim, max_frames=max_frames)
