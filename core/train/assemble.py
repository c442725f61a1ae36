"""Building a model from selected components: the same code for training and for loading.

Every factory's product is checked against its family contract (:mod:`vlmplug.contracts`) as it
is built, so a plugin missing a member fails here, naming the plugin and the member.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from vlmplug.build import build_component, check_product, needs

from .hardware import Hardware
from .llm import PRESETS, load_llm

__all__ = [
    "needs",
    "BuildContext",
    "build_component",
    "check_product",
    "llm_load_kwargs",
    "assemble_model",
    "model_manifest",
    "DTYPES",
    "llm_dtype",
]

log = logging.getLogger("vlmplug")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


@dataclass
class BuildContext:
    """What component factories receive besides their own config."""

    recipe: Any
    torch_dtype: Any
    hub_kwargs: dict[str, Any]
    on_bad_sample: str
    hardware: Hardware
    notes: list[str] = field(default_factory=list)
    #: The run's ``max_num_frames`` (frames per video), for connectors that size themselves by it.
    max_num_frames: int = 8
    #: Whether dataset formats may read files outside their data folder (``allow_paths_outside_data``).
    allow_paths_outside_data: bool = False
    #: Whether the training datasets are built for streaming (``streaming: true``): a dataset format
    #: then reads nothing up front and gives its rows through ``stream()``
    #: (:class:`vlmplug.contracts.StreamingDatasetFormat`). Eval sets are always built with ``False``.
    streaming: bool = False

    def note(self, message: str) -> None:
        self.notes.append(message)
        log.info(message)


def llm_load_kwargs(components: list[Any]) -> dict[str, Any]:
    """The LLM's extra ``from_pretrained`` arguments: the PEFT method's, then the stack's in order."""
    out: dict[str, Any] = {}
    for comp in components:
        out.update(comp.model_load_kwargs())
    return out


def llm_dtype(core: dict[str, Any]) -> Any:
    dtype = DTYPES[core["dtype"]]
    return torch.float32 if core["model"] in PRESETS and dtype == "auto" else dtype


def assemble_model(
    *,
    single: dict[str, Any],
    fusion: Any,
    tokenizer: Any,
    core: dict[str, Any],
    ctx: Any,
    load_kwargs: dict[str, Any],
    llm: Any = None,
    tower: Any = None,
) -> Any:
    """Vision tower, LLM, connector and fusion -> the model (no PEFT yet). ``llm`` / ``tower`` may
    be given already loaded (reloading a saved model)."""
    tower = tower if tower is not None else build_component(single["vision_encoder"], ctx)
    from_preset = core["model"] in PRESETS
    if llm is None:
        llm, from_preset = load_llm(
            core["model"],
            tokenizer,
            dtype=llm_dtype(core),
            overrides=dict(core.get("model_config") or {}),
            load_kwargs=load_kwargs,
            hub_kwargs=ctx.hub_kwargs,
            attn_implementation=core["attn_implementation"],
            image_token=core["image_token"],
        )
    hidden = llm.get_input_embeddings().weight.shape[1]
    extra = {"vocab_size": len(tokenizer)} if needs(single["connector"], "instruction") else {}
    connector = build_component(
        single["connector"], ctx, in_dim=tower.hidden_size, out_dim=hidden, num_input_tokens=tower.num_patches, **extra
    )
    connector.to(next(llm.parameters()).dtype)
    image_token_id = tokenizer.convert_tokens_to_ids(core["image_token"])
    vlm = fusion.build(llm=llm, vision_encoder=tower, connector=connector, image_token_id=image_token_id)
    check_product(single["fusion"], vlm, "model")
    vlm.tokenizer = tokenizer
    vlm.tokens_per_image = int(fusion.placeholder_tokens(connector))
    vlm.manifest = model_manifest(single, core, from_preset, vlm.tokens_per_image)
    return vlm


#: Core values a saved model needs to be rebuilt.
MODEL_CORE_KEYS = (
    "model",
    "model_config",
    "dtype",
    "attn_implementation",
    "image_token",
    "trust_remote_code",
    "max_seq_length",
    "chat_template",
    "max_num_frames",
    "frame_sampling",
    "sampling_fps",
)


def model_manifest(
    single: dict[str, Any], core: dict[str, Any], save_llm_base: bool, tokens_per_image: int
) -> dict[str, Any]:
    """What ``vlmplug_model.json`` records: the components with their options and the core values.
    ``save_llm_base``: the base LLM cannot be reloaded from ``core["model"]`` (a random-init preset, or
    weights that come from a pretrained VLM), so adapter methods save it too."""
    from vlmplug._version import __version__

    return {
        "vlmplug_version": __version__,
        "components": {fam: sel.to_dict() for fam, sel in single.items()},
        "core": {k: core.get(k) for k in MODEL_CORE_KEYS},
        "save_llm_base": bool(save_llm_base),
        "tokens_per_image": tokens_per_image,
    }


def make_sample_encoder(core: dict[str, Any], single: dict[str, Any], vlm: Any, tokenizer: Any) -> Any:
    """The tokenizer side of the data pipeline for a model (a run's, or a saved one's, from its manifest's
    ``core`` values and component selections): placeholders per image, instructions for a text-conditioned
    connector, and how videos are sampled and split into image slots."""
    from vlmplug.errors import ConfigError

    from .data import SampleEncoder
    from .video import VideoOptions

    if vlm.tokens_per_image >= core["max_seq_length"]:
        parts = ", ".join(f"{fam.replace('_', ' ')} '{single[fam].name}'" for fam in ("vision_encoder", "connector"))
        raise ConfigError(
            f"max_seq_length {core['max_seq_length']}: one image alone takes {vlm.tokens_per_image} tokens "
            f"({parts}); raise max_seq_length or lower the image token budget (`vlmplug info` on them)",
            header="sequence length",
        )
    max_frames = int(getattr(vlm.connector, "max_frames", 1) or 1)
    if 1 < max_frames < core["max_num_frames"]:
        name = single["connector"].name
        raise ConfigError(
            f"max_num_frames {core['max_num_frames']}: connector '{name}' takes at most {max_frames} frames "
            f"per video; lower max_num_frames or set {name}.max_frames: {core['max_num_frames']}",
            header="videos",
        )
    return SampleEncoder(
        tokenizer,
        core["image_token"],
        vlm.tokens_per_image,
        core["max_seq_length"],
        with_instructions=needs(single["connector"], "instruction"),
        video=VideoOptions(core["max_num_frames"], core["frame_sampling"], float(core["sampling_fps"])),
        video_per_slot=max_frames > 1,
        on_overlength=core["on_overlength"],
    )
