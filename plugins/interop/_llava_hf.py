"""Glue between vlmplug models and the LLaVA-HF converter (:mod:`._llava_convert`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from vlmplug.errors import ConfigError

from ._llava_convert import (
    LlavaExportError,
    LlavaParts,
    export_llava_hf,
    import_llava_hf,
    tower_kind,
    vision_model_at_resolution,
)

SUPPORTED = {"vision_encoder": ("clip", "siglip"), "connector": ("linear", "mlp"), "fusion": ("interleaved",)}


def _component(manifest: dict[str, Any], family: str) -> dict[str, Any]:
    entry = (manifest.get("components") or {}).get(family) or {}
    name = entry.get("name")
    if name not in SUPPORTED[family]:
        raise ConfigError(
            f"--format llava-hf: the model's {family.replace('_', ' ')} is '{name}'; LLaVA-HF holds "
            f"{' or '.join(SUPPORTED[family])} (export --format merged keeps any model)",
            header="export",
        )
    return entry


def parts_from_vlm(vlm: Any) -> LlavaParts:
    """The LLaVA parts of a loaded vlmplug model (adapters merged first)."""
    manifest = vlm.manifest
    _component(manifest, "vision_encoder")
    connector = _component(manifest, "connector")
    _component(manifest, "fusion")
    if vlm.peft_method is not None:
        vlm = vlm.peft_method.merge(vlm)
    tower = vlm.vision_encoder
    return LlavaParts(
        vision_model=_tower_model(tower),
        image_processor=tower.image_processor,
        feature_layer=tower.feature_layer,
        drop_cls=tower.drop_cls,
        connector_kind=connector["name"],
        connector_state_dict={k: v.detach() for k, v in vlm.connector.state_dict().items()},
        llm=vlm.llm,
        tokenizer=vlm.tokenizer,
        image_token=manifest["core"]["image_token"],
        connector_act=connector.get("hidden_act") if connector["name"] == "mlp" else None,
    )


def _tower_model(tower: Any) -> Any:
    """The transformers vision model that computes ``tower``'s features inside LLaVA-HF: at
    ``image_resolution`` the interpolated position embeddings become the table (exact); patch pooling
    and SigLIP's final LayerNorm have no LLaVA-HF equivalent."""
    if getattr(tower, "pooled_grid", None) != getattr(tower, "grid_size", None):
        raise LlavaExportError(
            f"patch_pooling pools the {tower.grid_size} x {tower.grid_size} patch grid to {tower.pooled_grid} x "
            f"{tower.pooled_grid}; LLaVA-HF feeds every patch to the projector (export with patch_pooling: none, "
            "or --format merged)"
        )
    if getattr(tower, "post_layernorm", False):
        raise LlavaExportError(
            "post_layernorm: true applies the SigLIP tower's final LayerNorm; LLaVA-HF reads the raw hidden state"
        )
    model = tower.model
    tower_kind(model)
    resolution = getattr(tower, "image_size", model.config.image_size)
    return vision_model_at_resolution(model, resolution)


def export_vlm(vlm: Any, out_dir: str) -> None:
    try:
        export_llava_hf(parts_from_vlm(vlm), out_dir)
    except LlavaExportError as e:
        raise ConfigError(f"--format llava-hf: {e}", header="export") from None


def import_to_vlmplug(model: str, out_dir: str, hub_kwargs: dict[str, Any]) -> None:
    """Write the LLaVA-HF checkpoint ``model`` as a saved vlmplug model directory at ``out_dir``:
    ``vision_tower/`` (a CLIP or SigLIP folder), ``connector.safetensors``, ``llm/``, ``tokenizer/``,
    ``processor/``."""
    try:
        parts = import_llava_hf(model, **hub_kwargs)
    except LlavaExportError as e:
        raise ConfigError(f"model: {model} cannot be imported as LLaVA-HF: {e}", header="import") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts.vision_model.save_pretrained(out / "vision_tower")
    parts.image_processor.save_pretrained(out / "vision_tower")
    parts.image_processor.save_pretrained(out / "processor")
    save_file(
        {k: v.contiguous() for k, v in parts.connector_state_dict.items()},
        str(out / "connector.safetensors"),
        metadata={"format": "pt"},
    )
    parts.llm.save_pretrained(out / "llm")
    parts.tokenizer.save_pretrained(out / "tokenizer")
    connector: dict[str, Any] = (
        {"name": "linear", "bias": "proj.bias" in parts.connector_state_dict}
        if parts.connector_kind == "linear"
        else {"name": "mlp", "depth": 2, "hidden_act": parts.connector_act}
    )
    encoder: dict[str, Any] = {
        "name": tower_kind(parts.vision_model),
        "model": "./vision_tower",
        "feature_layer": parts.feature_layer,
    }
    if encoder["name"] == "clip":
        encoder["drop_cls"] = parts.drop_cls
    manifest = {
        "format_version": 1,
        "imported_from": {"format": "llava-hf", "model": model},
        "components": {
            "vision_encoder": encoder,
            "connector": connector,
            "fusion": {"name": "interleaved"},
        },
        "core": {
            "model": "./llm",
            "model_config": {},
            "dtype": "auto",
            "attn_implementation": "auto",
            "image_token": parts.image_token,
            "trust_remote_code": bool(hub_kwargs.get("trust_remote_code")),
        },
        "parts": {"connector": "connector.safetensors"},
        "llm_files": {"llm": "llm"},
        "tokens_per_image": parts.tokens_per_image,
        "image_token_id": parts.image_token_id,
    }
    (out / "vlmplug_model.json").write_text(json.dumps(manifest, indent=2))
