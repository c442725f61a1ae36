"""``eva-clip``: EVA-02 / EVA-CLIP vision towers through timm (Fang et al. 2023, "EVA-02: A Visual
Representation for Neon Genesis"; Sun et al. 2023, "EVA-CLIP"), the encoder family of e.g.
InternVL-style and Emu VLMs.

EVA-02 is a ViT with a CLS token, rotary position embeddings and SwiGLU MLPs, pretrained by masked
image modelling against EVA-CLIP features and then contrastively (EVA-CLIP). timm ships the towers
(``eva02_large_patch14_clip_336.merged2b``: 576 patch tokens of width 1024 at 336 px, like LLaVA's
CLIP-L/336); this component loads them through ``timm.create_model`` -- a timm name, a ``timm/...``
hub id or a local directory timm saved (``config.json`` + ``model.safetensors``) -- and reads a
hidden layer as ``clip`` does: ``feature_layer`` (default -2, LLaVA's choice), CLS dropped, and the
same ``image_resolution`` (timm resamples the absolute position embedding bicubically and recomputes
the rotary grid) and ``patch_pooling`` options.

timm imports torchvision, whose build must match torch's: hence the extra (``pip install
"vlmplug[eva-clip]"``); without it the component still lists, ``vlmplug info eva-clip`` says what is
missing, and a recipe selecting it fails before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmplug import ComponentSpec, hookimpl

from ._tower_config import TowerConfig


@dataclass(frozen=True, kw_only=True)
class EvaClipConfig(TowerConfig):
    model: str = field(
        default="timm/eva02_large_patch14_clip_336.merged2b",
        metadata={
            "help": "timm model name or 'timm/<name>' hub id of an EVA-02 / EVA-CLIP tower, a local directory "
            "saved by timm, or 'tiny' for a random-init tower from the tiny_* options."
        },
    )
    feature_layer: int = field(default=-2, metadata={"help": "Hidden layer the features come from (-1 = last)."})
    drop_cls: bool = field(default=True, metadata={"help": "Drop the CLS token, keeping only patch tokens."})


def capabilities(config: EvaClipConfig) -> dict[str, list[str]]:
    """A square patch grid once the CLS token is dropped, as for ``clip``."""
    return {"offers": ["patch-grid"] if config.drop_cls else []}


SPEC = ComponentSpec(
    name="eva-clip",
    summary="EVA-02 / EVA-CLIP ViT tower through timm; timm name, hub id, local dir or tiny preset",
    factory="vlmplug.plugins.encoders._eva_clip:build",
    config=EvaClipConfig,
    capabilities=capabilities,
    extras={"timm": "eva-clip"},
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
def register_vision_encoders(register: Any) -> None:
    register(SPEC)


@hookimpl(trylast=True)
def detect_vision_encoder(model: str, config: dict[str, Any] | None) -> str | None:
    """timm configs name their ``architecture``; hub ids and names contain ``eva02`` / ``eva-clip``."""
    if config is not None:
        return "eva-clip" if str(config.get("architecture", "")).startswith(("eva02", "eva_")) else None
    text = model.lower().replace("-", "").replace("_", "")
    return "eva-clip" if any(name in text for name in ("evaclip", "eva02")) else None
