"""``perceiver``: the Perceiver Resampler of Flamingo (Alayrac et al. 2022), as in Idefics2 (Laurençon et al. 2024).

Vision features are projected to the LLM width (Idefics2's modality projection), then a fixed set of
learned latents cross-attends to them for ``depth`` layers: every image -- or every video, frames x
patches -- becomes ``num_query_tokens`` LLM tokens, whatever the number of input features. Multi-frame
input gets Flamingo's learned time embeddings. The layers are transformers' own
``Idefics2PerceiverResampler``; see :mod:`vlmplug.plugins.connectors._perceiver`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class PerceiverConfig:
    num_query_tokens: int = field(
        default=64,
        metadata={
            "help": "Learned latents = LLM tokens per image or video (Idefics2 and the guide's video recipe: 64)."
        },
    )
    depth: int = field(default=3, metadata={"help": "Resampler layers (Idefics2: 3)."})
    heads: int = field(default=16, metadata={"help": "Attention heads per resampler layer (Idefics2: 16)."})
    head_dim: int = field(default=96, metadata={"help": "Width of each attention head (Idefics2: 96)."})
    max_frames: int | None = field(
        default=None,
        metadata={
            "help": "Frames per video for [B, F, N, D] input (unset: the run's max_num_frames); above 1, a "
            "video's frames are resampled together, each with a learned time embedding (Flamingo). "
            "1: single images only (a video then takes one slot per frame)."
        },
    )
    projection: Literal["mlp", "linear"] = field(
        default="mlp",
        metadata={
            "help": "Vision width -> LLM width before resampling: 'mlp' (Idefics2's gated SiLU MLP, hidden "
            "width = the LLM width) or 'linear'."
        },
    )

    def __post_init__(self) -> None:
        for name in ("num_query_tokens", "depth", "heads", "head_dim", "max_frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")


SPEC = ComponentSpec(
    name="perceiver",
    summary="Perceiver Resampler: num_query_tokens learned latents cross-attend to the features (Flamingo, Idefics2)",
    factory="vlmplug.plugins.connectors._perceiver:build_perceiver",
    config=PerceiverConfig,
    aliases=("perceiver_resampler", "perceiver-resampler"),
    activated_by={"perceiver_resampler": True},
    flat_keys=("num_query_tokens",),
    test_options={"num_query_tokens": 6, "depth": 2, "heads": 2, "head_dim": 8, "max_frames": 2},
)


@hookimpl
def register_connectors(register) -> None:
    register(SPEC)
