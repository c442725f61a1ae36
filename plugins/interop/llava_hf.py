"""``llava-hf``: the LLaVA layout of Hugging Face transformers (``LlavaForConditionalGeneration``).

* ``vlmplug export RUN --format llava-hf --out DIR`` writes a (clip | siglip) + (linear | mlp) +
  interleaved model (LoRA merged first; a tower run at ``image_resolution`` is written at that size)
  as a folder that plain transformers loads with ``LlavaForConditionalGeneration`` /
  ``AutoModelForImageTextToText`` and ``AutoProcessor``: the same logits and greedy generations,
  processor and chat template included.
* ``model: <LLaVA-HF checkpoint>`` in a recipe (a directory or a hub id) imports it into vlmplug's
  components -- the CLIP or SigLIP tower, the projector (``mlp`` or ``linear``) and the LLM -- and
  fine-tunes it.

The conversion itself (and what LLaVA-HF cannot express) is in ``_llava_convert``; this module stays
light so that detection needs no torch.
"""

from __future__ import annotations

from typing import Any

from vlmplug import hookimpl

FORMAT = "llava-hf"
_ACTS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
#: ``vision_config.model_type`` (absent: LlavaConfig's default, CLIP) -> vlmplug's encoder.
_TOWERS = {"clip_vision_model": "clip", None: "clip", "siglip_vision_model": "siglip"}


@hookimpl
def model_formats() -> list[str]:
    return [FORMAT]


@hookimpl
def export_model(model: Any, format: str, out_dir: str) -> bool | None:
    if format != FORMAT:
        return None
    from ._llava_hf import export_vlm

    export_vlm(model, out_dir)
    return True


@hookimpl
def detect_model_format(model: str, config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A LLaVA checkpoint with a CLIP or SigLIP tower, from its ``config.json`` alone."""
    if not config or config.get("model_type") != "llava":
        return None
    vision = config.get("vision_config") or {}
    layer = config.get("vision_feature_layer", -2)
    act = config.get("projector_hidden_act", "gelu")
    strategy = config.get("vision_feature_select_strategy", "default")
    tower = _TOWERS.get(vision.get("model_type"))
    if tower is None or not isinstance(layer, int) or (tower == "siglip" and strategy != "full"):
        return None  # a tower, layer list or strategy vlmplug cannot represent: import_model explains why
    connector: dict[str, Any] = (
        {"name": "linear", "bias": bool(config.get("multimodal_projector_bias", True))}
        if act == "linear"
        else {"name": "mlp", "hidden_act": _ACTS.get(act, act)}
    )
    encoder: dict[str, Any] = {"name": tower, "model": model, "feature_layer": layer}
    if tower == "clip":
        encoder["drop_cls"] = strategy == "default"
    return {
        "format": FORMAT,
        "components": {
            "vision_encoder": encoder,
            "connector": connector,
            "fusion": {"name": "interleaved"},
        },
    }


@hookimpl
def import_model(model: str, format: str, out_dir: str, hub_kwargs: dict[str, Any]) -> bool | None:
    if format != FORMAT:
        return None
    from ._llava_hf import import_to_vlmplug

    import_to_vlmplug(model, out_dir, hub_kwargs)
    return True
