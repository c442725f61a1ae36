"""``siglip``: the SigLIP ViT vision tower (Zhai et al. 2023, "Sigmoid Loss for Language Image
Pre-Training"), the encoder of PaliGemma (Beyer et al. 2024) and Idefics2 (Laurençon et al. 2024).

SigLIP has no CLS token: every hidden state is a patch, so the features are always a square grid
(``google/siglip-so400m-patch14-384``: 27 x 27 = 729 tokens of width 1152) and the component always
offers ``patch-grid``. Features are the hidden state of ``feature_layer`` (default -1, the last
encoder layer) *before* the tower's final LayerNorm, the way LLaVA-HF reads a SigLIP tower
(``hidden_states[vision_feature_layer]``); ``post_layernorm: true`` applies that LayerNorm as
PaliGemma and Idefics2 do (their features are ``last_hidden_state``). The attention-pooling head
(``vision_use_head``) is never used for patch features and is not loaded.

``image_resolution`` and ``patch_pooling`` / ``pooled_grid`` work as for ``clip`` (the guide's
document recipe: SigLIP-so400m at 768 px, adaptive pooling): position embeddings interpolated
bicubically, the patch grid average-pooled to a token budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmplug import ComponentSpec, hookimpl

from ._tower_config import TowerConfig


@dataclass(frozen=True, kw_only=True)
class SiglipConfig(TowerConfig):
    model: str = field(
        default="google/siglip-so400m-patch14-384",
        metadata={
            "help": "Hub id or local path of a SigLIP (vision) model, or 'tiny' to build a "
            "random-init tower from the tiny_* options."
        },
    )
    feature_layer: int = field(
        default=-1, metadata={"help": "Hidden layer the features come from (-1 = last, -2 = penultimate)."}
    )
    post_layernorm: bool = field(
        default=False,
        metadata={
            "help": "Apply the tower's final LayerNorm to the features (PaliGemma / Idefics2 style); "
            "off: the raw hidden state, as LLaVA-HF reads it."
        },
    )


SPEC = ComponentSpec(
    name="siglip",
    summary="SigLIP ViT vision tower (PaliGemma / Idefics2); no CLS token; hub id, local path or tiny preset",
    factory="vlmplug.plugins.encoders._siglip:build",
    config=SiglipConfig,
    offers=("patch-grid",),
    flat_keys=("image_resolution", "patch_pooling", "pooled_grid"),
    test_options={
        "model": "tiny",
        "tiny_image_size": 32,
        "tiny_patch_size": 8,
        "tiny_hidden_size": 32,
        "tiny_layers": 2,
        "tiny_heads": 2,
    },
)

#: ``model_type`` of a full SigLIP checkpoint and of a vision-only one.
MODEL_TYPES = ("siglip", "siglip_vision_model")


@hookimpl
def register_vision_encoders(register: Any) -> None:
    register(SPEC)


@hookimpl(trylast=True)
def detect_vision_encoder(model: str, config: dict[str, Any] | None) -> str | None:
    """SigLIP configs decide by ``model_type``; hub ids by name (``google/siglip-so400m-patch14-384``).
    SigLIP 2 NaFlex towers (``siglip2``, variable resolution) are a different architecture."""
    if config is not None:
        return "siglip" if str(config.get("model_type", "")) in MODEL_TYPES else None
    lowered = model.lower()
    return "siglip" if "siglip" in lowered and "naflex" not in lowered else None
