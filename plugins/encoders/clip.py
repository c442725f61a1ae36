"""``clip``: the CLIP ViT vision tower (Radford et al. 2021), as used by LLaVA (Liu et al. 2023).

Features come from a hidden layer (LLaVA-1.5 takes the penultimate, ``feature_layer: -2``) with the
CLS token dropped, so a ViT-L/14 at 336 px gives 576 patch tokens of width 1024.

``image_resolution`` runs the tower above (or below) its pretrained resolution by bicubic
interpolation of the patch position embeddings (the DINO / DINOv2 recipe that transformers'
``interpolate_pos_encoding`` implements; the CLS position is kept as is), and ``patch_pooling:
adaptive`` average-pools the patch grid to ``pooled_grid x pooled_grid`` tokens so that a higher
resolution need not raise the token budget (the guide's document recipe keys; see ``_pooling``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmplug import ComponentSpec, hookimpl

from ._tower_config import TowerConfig


@dataclass(frozen=True, kw_only=True)
class ClipConfig(TowerConfig):
    model: str = field(
        default="openai/clip-vit-large-patch14-336",
        metadata={
            "help": "Hub id or local path of a CLIP (vision) model, or 'tiny' to build a "
            "random-init tower from the tiny_* options."
        },
    )
    feature_layer: int = field(default=-2, metadata={"help": "Hidden layer the features come from (-1 = last)."})
    drop_cls: bool = field(default=True, metadata={"help": "Drop the CLS token, keeping only patch tokens."})


def capabilities(config: ClipConfig) -> dict[str, list[str]]:
    """Patch features form a square grid once the CLS token is dropped (pooled or not)."""
    return {"offers": ["patch-grid"] if config.drop_cls else []}


SPEC = ComponentSpec(
    name="clip",
    summary="CLIP ViT vision tower (LLaVA's encoder); hub id, local path or tiny preset",
    factory="vlmplug.plugins.encoders._clip:build",
    config=ClipConfig,
    capabilities=capabilities,
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


@hookimpl
def register_vision_encoders(register) -> None:
    register(SPEC)


@hookimpl(trylast=True)
def detect_vision_encoder(model: str, config: dict[str, Any] | None) -> str | None:
    if config is not None:
        kind = str(config.get("model_type", ""))
        return "clip" if kind in ("clip", "clip_vision_model") else None
    lowered = model.lower()
    if "clip" in lowered and "eva" not in lowered and "siglip" not in lowered:
        return "clip"
    return None
