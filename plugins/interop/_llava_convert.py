"""Convert between vlmplug's model parts and the LLaVA format of Hugging Face transformers.

vlmplug composes a LLaVA-style model from separate parts: a ``CLIPVisionModel`` (features taken from
one hidden-state layer, CLS token dropped or kept) or a ``SiglipVisionModel`` (no CLS token: every
hidden state is a patch), a connector (one linear layer, or a two-layer
MLP), any ``AutoModelForCausalLM`` and a tokenizer with an image placeholder token. The placeholder
is repeated once per vision token and those input embeddings are overwritten, in order, by the
connector's outputs ("interleaved" fusion).

transformers' ``LlavaForConditionalGeneration`` computes the same function, so the parts can be
written as a LLaVA-HF checkpoint (:func:`export_llava_hf`) and read back (:func:`import_llava_hf`).

Mapping (vlmplug -> LLaVA-HF):

* vision tower -> ``model.vision_tower`` (a ``CLIPVisionModel`` or ``SiglipVisionModel``);
  ``feature_layer`` -> ``vision_feature_layer``; ``drop_cls`` True/False ->
  ``vision_feature_select_strategy`` ``"default"``/``"full"``. A SigLIP tower is always ``"full"``
  (``"default"`` would drop a real patch) and its processor adds no extra token
  (``num_additional_image_tokens`` 0, against CLIP's 1 for CLS), so ``LlavaProcessor`` expands one
  image into ``(S // patch) ** 2`` tokens, the tower's grid. A tower run above its pretrained
  resolution (vlmplug's ``image_resolution``) is written with that resolution as ``image_size`` and
  the position embeddings it interpolates there (:func:`vision_model_at_resolution`).
* ``mlp`` connector (``proj.0`` -> act -> ``proj.2``) -> ``multi_modal_projector.linear_1`` ->
  ``projector_hidden_act`` -> ``linear_2``.
* ``linear`` connector (``proj``) -> ``linear_1`` = ``proj``, ``projector_hidden_act="linear"``
  (the identity) and ``linear_2`` = identity matrix with a zero bias. Multiplying by an identity
  matrix and adding zero is exact in floating point (fp32, bf16, fp16), so the exported model
  computes bit-identical vision tokens; not so under TF32 matmuls on GPUs, which round the inputs.
* the LLM's base model -> ``model.language_model``; its ``lm_head`` -> ``lm_head``.
* the tokenizer, the image processor and a LLaVA chat template -> a ``LlavaProcessor`` whose
  placeholder expansion matches the connector's token count.

The image token outside the LLM vocabulary: vlmplug's fusion never looks up the embedding of the
image token (those positions are overwritten), so its id may be ``>= vocab_size``. LLaVA-HF's
forward pass, however, embeds ``input_ids`` *before* overwriting the image positions, so an id past
the end of the embedding matrix is an index error there. The exporter therefore appends zero rows to
the embedding matrix (and to an untied ``lm_head``) up to and including the image token id, lists
those ids in ``generation_config.suppress_tokens`` so that generation never picks them, and records
the original vocabulary size in the config (``vlmplug_text_vocab_size``) so that
:func:`import_llava_hf` can drop the rows again. The logits of the original vocabulary are
unchanged; the extra columns are exactly zero (they do enter a softmax taken over the full width).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = [
    "VOCAB_SIZE_FIELD",
    "ConnectorKind",
    "LlavaExportError",
    "LlavaParts",
    "export_llava_hf",
    "import_llava_hf",
    "tower_kind",
    "vision_model_at_resolution",
    "unwrap_chat_template",
    "wrap_chat_template",
]

ConnectorKind = Literal["linear", "mlp"]

#: Config field (top level of the exported ``LlavaConfig``) holding the LLM's vocabulary size before
#: rows were appended for an out-of-vocabulary image token; absent when no rows were appended.
VOCAB_SIZE_FIELD = "vlmplug_text_vocab_size"

# vlmplug's connector activations, by name; each has the same-named, numerically identical entry
# in transformers' ACT2FN (torch's exact GELU, ReLU and SiLU).
_VLMPLUG_ACTS = ("gelu", "relu", "silu")
# transformers' projector_hidden_act values vlmplug can represent -> vlmplug's name.
_ACTS_FROM_HF = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}

_ADAPTER_BEGIN = "{#- vlmplug: llava chat-content adapter, begin #}"
_ADAPTER_END = "{#- vlmplug: llava chat-content adapter, end #}{{- '' }}"


class LlavaExportError(ValueError):
    """The parts or the checkpoint use something the other side cannot represent."""


@dataclass
class LlavaParts:
    """vlmplug's pieces of a LLaVA-style model.

    Attributes:
        vision_model: the vision tower, a ``CLIPVisionModel`` or a ``SiglipVisionModel``.
        image_processor: its preprocessing settings (``CLIPImageProcessorPil`` /
            ``SiglipImageProcessorPil`` in vlmplug).
        feature_layer: index into ``hidden_states`` of the vision tower (e.g. ``-2``).
        drop_cls: drop the CLS token from the features (LLaVA's ``"default"`` strategy); always
            ``False`` for SigLIP, which has none.
        connector_kind: ``"linear"`` (``proj.weight`` [+ ``proj.bias``]) or ``"mlp"``
            (``proj.0.*``, ``proj.2.*``).
        connector_state_dict: the connector's weights, with vlmplug's key names.
        llm: the causal language model.
        tokenizer: the tokenizer; ``image_token`` must be one token of it.
        image_token: the image placeholder string.
        connector_act: the MLP's activation (``gelu``/``relu``/``silu``); ``None`` for ``linear``.
    """

    vision_model: Any
    image_processor: Any
    feature_layer: int
    drop_cls: bool
    connector_kind: ConnectorKind
    connector_state_dict: dict[str, torch.Tensor]
    llm: Any
    tokenizer: Any
    image_token: str = "<image>"
    connector_act: str | None = "gelu"

    @property
    def image_token_id(self) -> int:
        """The image token's id in the tokenizer (it may be ``>=`` the LLM's vocabulary size)."""
        return _single_token_id(self.tokenizer, self.image_token)

    @property
    def cls_tokens(self) -> int:
        """Tokens the tower puts before its patch grid: CLIP's CLS (1), none for SigLIP."""
        return 1 if tower_kind(self.vision_model) == "clip" else 0

    @property
    def tokens_per_image(self) -> int:
        """Vision tokens per image after the connector: grid cells, plus CLS unless dropped."""
        cfg = self.vision_model.config
        grid = cfg.image_size // cfg.patch_size
        return grid * grid + (0 if self.drop_cls else self.cls_tokens)


def tower_kind(vision: Any) -> Literal["clip", "siglip"]:
    """``"clip"`` or ``"siglip"`` for the vision towers LLaVA-HF and vlmplug share; else an error."""
    from transformers import CLIPVisionModel, SiglipVisionModel

    if isinstance(vision, CLIPVisionModel):
        return "clip"
    if isinstance(vision, SiglipVisionModel):
        return "siglip"
    raise LlavaExportError(
        f"vision_model must be a transformers CLIPVisionModel or SiglipVisionModel, got {type(vision).__name__}"
    )


def vision_model_at_resolution(vision: Any, resolution: int) -> Any:
    """``vision`` as a tower whose native input size is ``resolution``: the same weights, with the
    position embeddings it interpolates at that size (transformers' ``interpolate_pos_encoding``,
    bicubic) stored as its table, so that running it without interpolation computes exactly what
    ``vision`` computes with it. Returns ``vision`` itself at its own size; ``vision`` is not modified."""
    cfg: Any = vision.config
    if resolution == cfg.image_size:
        return vision
    prefix = 1 if tower_kind(vision) == "clip" else 0
    grid = resolution // cfg.patch_size
    table = vision.embeddings.position_embedding.weight
    probe = table.new_zeros((1, prefix + grid * grid, table.shape[1]))
    with torch.no_grad():
        wide = vision.embeddings.interpolate_pos_encoding(probe, resolution, resolution)[0]
    new_cfg = copy.deepcopy(cfg)
    new_cfg.image_size = resolution
    with torch.device("meta"):
        model = type(vision)(new_cfg)
    state = {k: v.detach() for k, v in vision.state_dict().items()}
    state["embeddings.position_embedding.weight"] = wide.detach().clone()
    model.load_state_dict(state, strict=True, assign=True)
    embeddings: Any = model.embeddings
    embeddings.position_ids = torch.arange(wide.shape[0], device=wide.device).expand((1, -1))
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise LlavaExportError(f"cannot rebuild the vision tower at {resolution} px: {leftover[:4]} left unset")
    return model.train(vision.training)


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------


def export_llava_hf(
    parts: LlavaParts,
    directory: str | Path,
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: str | int = "5GB",
) -> Path:
    """Write ``parts`` as a LLaVA-HF checkpoint directory.

    The result loads with ``LlavaForConditionalGeneration.from_pretrained(directory)``,
    ``AutoModelForImageTextToText.from_pretrained(directory)`` and
    ``AutoProcessor.from_pretrained(directory)`` (a ``LlavaProcessor``).

    Args:
        parts: the vlmplug parts; they are not modified.
        directory: output directory; it must not exist or be empty.
        dtype: dtype of all saved weights; defaults to the LLM's dtype.
        max_shard_size: passed to ``save_pretrained``.

    Returns:
        The output directory.

    Raises:
        LlavaExportError: the parts cannot be expressed as LLaVA-HF (a vision tower other than CLIP or SigLIP, a
            deeper MLP connector, an unsupported activation, mismatched sizes, an image processor
            whose behaviour would differ, ...).
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    out = Path(directory)
    if out.exists() and any(out.iterdir()):
        raise LlavaExportError(f"export directory {out} is not empty; choose a new or empty directory")

    vision = parts.vision_model
    kind = tower_kind(vision)
    if kind == "siglip" and parts.drop_cls:
        raise LlavaExportError(
            "drop_cls is true, but a SigLIP tower has no CLS token to drop (use the 'full' strategy)"
        )
    vcfg: Any = vision.config
    _check_square(vcfg.image_size, "vision_model.config.image_size")
    _check_feature_layer(parts.feature_layer, vcfg.num_hidden_layers, "feature_layer")
    _check_image_processor(parts.image_processor, vcfg.image_size, "image_processor", kind)

    llm = parts.llm
    dtype = dtype or llm.dtype
    text_hidden = llm.get_input_embeddings().weight.shape[1]
    projector, act, bias = _connector_to_projector(
        parts.connector_kind, parts.connector_act, parts.connector_state_dict, vcfg.hidden_size, text_hidden
    )

    image_token_id = parts.image_token_id
    llm_state, vocab_size, padded_size, tied = _llm_state_for_llava(llm, image_token_id)
    if len(parts.tokenizer) > padded_size:
        raise LlavaExportError(
            f"the tokenizer has {len(parts.tokenizer)} tokens but the LLM embeds only {vocab_size} (plus "
            "the image token); ids past the embedding matrix other than the image token cannot be embedded"
        )

    text_config = copy.deepcopy(llm.config)
    text_config.vocab_size = padded_size
    text_config.tie_word_embeddings = tied
    config: Any = LlavaConfig(
        vision_config=copy.deepcopy(vcfg),
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=parts.tokens_per_image,
        projector_hidden_act=act,
        vision_feature_select_strategy="default" if parts.drop_cls else "full",
        vision_feature_layer=_llava_feature_layer(parts.feature_layer, vcfg.num_hidden_layers),
        multimodal_projector_bias=bias,
        tie_word_embeddings=tied,
    )
    if padded_size != vocab_size:
        setattr(config, VOCAB_SIZE_FIELD, vocab_size)
    config.dtype = dtype
    config.vision_config.dtype = dtype
    config.text_config.dtype = dtype

    state: dict[str, torch.Tensor] = {}
    state.update({f"model.vision_tower.{k}": v for k, v in vision.state_dict().items()})
    state.update({f"model.multi_modal_projector.{k}": v for k, v in projector.items()})
    state.update(llm_state)
    state = {k: v.detach().to(dtype) for k, v in state.items()}

    # Build the model skeleton without allocating or initialising weights, then point its
    # parameters at our tensors (no copy of the caller's weights, and they are not modified).
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise LlavaExportError(
            "the LLM's weights do not fit LlavaForConditionalGeneration (a base model plus a bias-free "
            f"lm_head): missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()

    gen = copy.deepcopy(llm.generation_config)
    if padded_size != vocab_size:
        gen.suppress_tokens = sorted(set(gen.suppress_tokens or []) | set(range(vocab_size, padded_size)))
        gen._from_model_config = False  # no longer derived from the model config alone
    model.generation_config = gen

    processor = _build_processor(parts, image_token_id, config.vision_feature_select_strategy)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    processor.save_pretrained(out)
    return out


def _build_processor(parts: LlavaParts, image_token_id: int, strategy: str) -> Any:
    """A ``LlavaProcessor`` over copies of the tokenizer and image processor, with the wrapped template."""
    from transformers import LlavaProcessor

    template = getattr(parts.tokenizer, "chat_template", None)
    if template is not None and not isinstance(template, str):
        raise LlavaExportError("the tokenizer has several named chat templates; only a single template is supported")
    processor = LlavaProcessor(
        image_processor=copy.deepcopy(parts.image_processor),
        tokenizer=copy.deepcopy(parts.tokenizer),
        patch_size=parts.vision_model.config.patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=wrap_chat_template(template, parts.image_token) if template else None,
        image_token=parts.image_token,
        num_additional_image_tokens=parts.cls_tokens,  # CLIP prepends one CLS token, SigLIP none
    )
    if processor.image_token != parts.image_token or processor.image_token_id != image_token_id:
        raise LlavaExportError(
            f"LlavaProcessor resolved the image token to {processor.image_token!r} "
            f"(id {processor.image_token_id}), not {parts.image_token!r} (id {image_token_id}); the "
            "tokenizer's own image_token attribute disagrees"
        )
    return processor


def _connector_to_projector(
    kind: str, act: str | None, state: dict[str, torch.Tensor], vision_hidden: int, text_hidden: int
) -> tuple[dict[str, torch.Tensor], str, bool]:
    """vlmplug connector weights -> (``LlavaMultiModalProjector`` state dict, hidden_act, bias).

    An ``mlp`` of depth 1 (``proj.0`` only) is exported like ``linear`` and imports as ``linear``.
    """
    state = {k: v.detach() for k, v in state.items()}
    if kind == "linear":
        keys = set(state)
        if keys not in ({"proj.weight"}, {"proj.weight", "proj.bias"}):
            raise LlavaExportError(f"linear connector: expected keys proj.weight[, proj.bias], got {sorted(keys)}")
        weight = state["proj.weight"]
        _check_shape("connector proj.weight", weight, (text_hidden, vision_hidden))
        bias = state.get("proj.bias")
        projector = {
            "linear_1.weight": weight,
            "linear_2.weight": torch.eye(text_hidden, dtype=weight.dtype, device=weight.device),
        }
        if bias is not None:
            projector["linear_1.bias"] = bias
            projector["linear_2.bias"] = torch.zeros(text_hidden, dtype=bias.dtype, device=bias.device)
        return projector, "linear", bias is not None
    if kind == "mlp" and set(state) == {"proj.0.weight", "proj.0.bias"}:
        # an MLP of depth 1 is a single linear layer
        return _connector_to_projector(
            "linear",
            None,
            {"proj." + k[len("proj.0.") :]: v for k, v in state.items()},
            vision_hidden,
            text_hidden,
        )
    if kind == "mlp":
        indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("proj.") and k.split(".")[1].isdigit()})
        if indices and indices[-1] > 2:
            depth = indices[-1] // 2 + 1
            raise LlavaExportError(
                f"mlp connector of depth {depth} ({depth} linear layers) has no LLaVA-HF equivalent: "
                "LlavaMultiModalProjector is exactly linear_1 -> act -> linear_2 (depth 2)"
            )
        expected = {"proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias"}
        if set(state) != expected:
            raise LlavaExportError(f"mlp connector: expected keys {sorted(expected)}, got {sorted(state)}")
        if act not in _VLMPLUG_ACTS:
            raise LlavaExportError(f"mlp connector: hidden_act must be one of {_VLMPLUG_ACTS}, got {act!r}")
        _check_shape("connector proj.0.weight", state["proj.0.weight"], (text_hidden, vision_hidden))
        _check_shape("connector proj.2.weight", state["proj.2.weight"], (text_hidden, text_hidden))
        projector = {
            "linear_1.weight": state["proj.0.weight"],
            "linear_1.bias": state["proj.0.bias"],
            "linear_2.weight": state["proj.2.weight"],
            "linear_2.bias": state["proj.2.bias"],
        }
        return projector, act, True
    raise LlavaExportError(f"connector kind must be 'linear' or 'mlp', got {kind!r}")


def _llm_state_for_llava(llm: Any, image_token_id: int) -> tuple[dict[str, torch.Tensor], int, int, bool]:
    """The LLM's weights under LLaVA-HF names, padded so that ``image_token_id`` can be embedded.

    Returns ``(state, vocab_size, padded_vocab_size, tied)``.
    """
    prefix = getattr(llm, "base_model_prefix", "")
    base = getattr(llm, prefix, None) if prefix else None
    if base is None or llm.get_output_embeddings() is None:
        raise LlavaExportError(
            "llm must be a transformers causal LM with a base model and an output head, got "
            f"{type(llm).__name__} (merge PEFT adapters into the model first, e.g. merge_and_unload())"
        )
    embed = llm.get_input_embeddings().weight
    head = llm.get_output_embeddings().weight
    vocab_size = embed.shape[0]
    if head.shape[0] != vocab_size:
        raise LlavaExportError(f"the LLM's lm_head has {head.shape[0]} rows but its embedding {vocab_size}")
    tied = head is embed or (head.data_ptr() == embed.data_ptr() and head.shape == embed.shape)
    padded_size = max(vocab_size, image_token_id + 1)

    def pad(weight: torch.Tensor) -> torch.Tensor:
        weight = weight.detach()
        if padded_size == vocab_size:
            return weight
        extra = weight.new_zeros((padded_size - vocab_size, weight.shape[1]))
        return torch.cat([weight, extra], dim=0)

    padded_embed = pad(embed)
    padded_head = padded_embed if tied else pad(head)
    state: dict[str, torch.Tensor] = {}
    for key, value in llm.state_dict(keep_vars=True).items():
        if value is embed:
            value = padded_embed
        elif value is head:
            value = padded_head
        else:
            value = value.detach()
        if key.startswith(prefix + "."):
            state["model.language_model." + key[len(prefix) + 1 :]] = value
        else:
            state[key] = value  # lm_head.*; anything else is reported by the caller's key check
    return state, vocab_size, padded_size, tied


# ----------------------------------------------------------------------------------------------
# import
# ----------------------------------------------------------------------------------------------


def import_llava_hf(
    path: str | Path,
    *,
    dtype: torch.dtype | str = "auto",
    restore_vocab: bool = True,
    **from_pretrained_kwargs: Any,
) -> LlavaParts:
    """Load a LLaVA-HF checkpoint (``LlavaForConditionalGeneration`` + ``LlavaProcessor``) as vlmplug parts.

    The model is loaded through ``LlavaForConditionalGeneration.from_pretrained`` (so legacy and current
    weight layouts both work) and then taken apart; the returned LLM shares the loaded tensors.

    Args:
        path: a local directory or hub id (anything ``from_pretrained`` accepts).
        dtype: passed to ``from_pretrained``.
        restore_vocab: drop embedding / lm_head rows that :func:`export_llava_hf` appended for an
            out-of-vocabulary image token (recorded in the config as ``vlmplug_text_vocab_size``).
        **from_pretrained_kwargs: passed to every ``from_pretrained`` call (e.g. ``revision``).

    Raises:
        LlavaExportError: the checkpoint uses something vlmplug cannot represent; the message names the
            config or processor field.
    """
    from huggingface_hub.errors import StrictDataclassError
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    try:
        config: Any = AutoConfig.from_pretrained(path, **from_pretrained_kwargs)
    except StrictDataclassError as e:  # transformers validates some fields itself (e.g. enum values)
        raise LlavaExportError(f"invalid config: {e}") from e
    if not isinstance(config, LlavaConfig):
        raise LlavaExportError(f"model_type is {config.model_type!r}; only 'llava' checkpoints can be imported")
    _check_llava_config(config)

    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, **from_pretrained_kwargs)
    vision = model.model.vision_tower
    tower_kind(vision)  # a CLIPVisionModel or SiglipVisionModel, as _check_llava_config required

    # vlmplug preprocesses with PIL; ask for the PIL backend (transformers picks torchvision when installed).
    processor = AutoProcessor.from_pretrained(path, backend="pil", **from_pretrained_kwargs)
    if not isinstance(processor, LlavaProcessor):
        raise LlavaExportError(f"the processor is a {type(processor).__name__}, expected a LlavaProcessor")
    _check_processor(processor, config)
    image_token, image_token_id = processor.image_token, int(processor.image_token_id)
    if image_token_id != config.image_token_id:
        raise LlavaExportError(
            f"config image_token_index is {config.image_token_id} but the processor's image_token "
            f"{image_token!r} has id {image_token_id}"
        )

    kind, act, connector_state = _projector_to_connector(model.model.multi_modal_projector, config)

    # The standalone causal LM: a skeleton without weights whose base model and head are replaced by
    # the loaded modules (so the loaded tensors, tying and buffers carry over unchanged).
    language_model = model.model.language_model
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    text_config: Any = copy.deepcopy(config.text_config)
    text_config.tie_word_embeddings = tied
    text_config.dtype = language_model.dtype
    if type(text_config) not in AutoModelForCausalLM._model_mapping:
        raise LlavaExportError(f"text_config.model_type {text_config.model_type!r} has no AutoModelForCausalLM class")
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(text_config)
    prefix = llm.base_model_prefix
    if type(getattr(llm, prefix)) is not type(language_model):
        raise LlavaExportError(
            f"the causal LM's base model is a {type(getattr(llm, prefix)).__name__} but the checkpoint's "
            f"language_model is a {type(language_model).__name__}"
        )
    setattr(llm, prefix, language_model)
    llm.set_output_embeddings(model.lm_head)
    if tied:
        llm.tie_weights()
    leftover = [n for n, t in [*llm.named_parameters(), *llm.named_buffers()] if t.is_meta]
    if leftover:
        raise LlavaExportError(f"the causal LM has weights outside its base model and lm_head: {leftover[:8]}")
    llm.generation_config = copy.deepcopy(model.generation_config)

    original_vocab = getattr(config, VOCAB_SIZE_FIELD, None)
    if restore_vocab and original_vocab is not None and image_token_id >= int(original_vocab):
        original_vocab = int(original_vocab)
        llm.resize_token_embeddings(original_vocab, mean_resizing=False)
        suppressed = [t for t in (llm.generation_config.suppress_tokens or []) if t < original_vocab]
        llm.generation_config.suppress_tokens = suppressed or None

    tokenizer = processor.tokenizer
    template = processor.chat_template if processor.chat_template is not None else tokenizer.chat_template
    if isinstance(template, str):
        tokenizer.chat_template = unwrap_chat_template(template, image_token)

    return LlavaParts(
        vision_model=vision,
        image_processor=processor.image_processor,
        feature_layer=_as_int(config.vision_feature_layer),
        drop_cls=config.vision_feature_select_strategy == "default",
        connector_kind=kind,
        connector_state_dict=connector_state,
        llm=llm,
        tokenizer=tokenizer,
        image_token=image_token,
        connector_act=act,
    )


#: LLaVA ``vision_config.model_type`` -> the tower kind vlmplug reads it as.
_VISION_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}


def _check_llava_config(config: Any) -> None:
    """Reject LLaVA configurations vlmplug's parts cannot express (before any weights are read)."""
    vision_type = getattr(config.vision_config, "model_type", None)
    if vision_type not in _VISION_TYPES:
        raise LlavaExportError(
            f"vision_config.model_type is {vision_type!r}; vlmplug reads CLIP ('clip_vision_model') and "
            "SigLIP ('siglip_vision_model') towers"
        )
    layer = config.vision_feature_layer
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise LlavaExportError(
            f"vision_feature_layer is {layer!r}; vlmplug takes features from one layer (an int), not a "
            "list of layers concatenated"
        )
    _check_feature_layer(layer, config.vision_config.num_hidden_layers, "vision_feature_layer")
    _check_square(config.vision_config.image_size, "vision_config.image_size")
    strategy = config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise LlavaExportError(f"vision_feature_select_strategy is {strategy!r}; expected 'default' or 'full'")
    if _VISION_TYPES[vision_type] == "siglip" and strategy != "full":
        raise LlavaExportError(
            f"vision_feature_select_strategy is {strategy!r} with a SigLIP tower, which has no CLS token: "
            "'default' drops its first patch; vlmplug's siglip keeps every patch ('full')"
        )
    act = config.projector_hidden_act
    if act != "linear" and act not in _ACTS_FROM_HF:
        raise LlavaExportError(
            f"projector_hidden_act is {act!r}; vlmplug's MLP connector supports {sorted(_ACTS_FROM_HF)} "
            "(and 'linear', imported as a linear connector)"
        )


def _check_processor(processor: Any, config: Any) -> None:
    """The processor must expand one image token into exactly the model's number of vision tokens."""
    vcfg = config.vision_config
    if processor.patch_size != vcfg.patch_size:
        raise LlavaExportError(
            f"processor patch_size is {processor.patch_size}, vision_config.patch_size is {vcfg.patch_size}"
        )
    if processor.vision_feature_select_strategy != config.vision_feature_select_strategy:
        raise LlavaExportError(
            "processor vision_feature_select_strategy is "
            f"{processor.vision_feature_select_strategy!r}, the model config's is "
            f"{config.vision_feature_select_strategy!r}"
        )
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    kind = _VISION_TYPES[vcfg.model_type]
    extra = 1 if kind == "clip" else 0
    if processor.num_additional_image_tokens != extra:
        raise LlavaExportError(
            f"processor num_additional_image_tokens is {processor.num_additional_image_tokens}; a "
            + ("CLIP tower adds exactly one (CLS) token" if kind == "clip" else "SigLIP tower adds none (no CLS)")
        )
    image_processor = processor.image_processor
    wanted = CLIPImageProcessorPil if kind == "clip" else SiglipImageProcessorPil
    if not isinstance(image_processor, wanted):
        raise LlavaExportError(
            f"the image processor is a {type(image_processor).__name__}; with a {kind} tower vlmplug "
            f"reproduces {wanted.__name__[: -len('Pil')]} preprocessing only"
        )
    _check_image_processor(image_processor, vcfg.image_size, "processor image_processor", kind)


def _projector_to_connector(projector: Any, config: Any) -> tuple[ConnectorKind, str | None, dict[str, torch.Tensor]]:
    """``LlavaMultiModalProjector`` -> (kind, act, vlmplug connector state dict)."""
    w1, w2 = projector.linear_1.weight.detach(), projector.linear_2.weight.detach()
    b1 = projector.linear_1.bias.detach() if projector.linear_1.bias is not None else None
    b2 = projector.linear_2.bias.detach() if projector.linear_2.bias is not None else None
    act = config.projector_hidden_act
    if act == "linear":
        # linear_2(linear_1(x)) is one affine map. When linear_2 is the identity (as written by
        # export_llava_hf) linear_1 is the connector as is; otherwise fold the two, in float64.
        identity = torch.eye(w2.shape[0], dtype=w2.dtype, device=w2.device)
        if torch.equal(w2, identity) and (b2 is None or not b2.any()):
            state = {"proj.weight": w1.clone()}
            if b1 is not None:
                state["proj.bias"] = b1.clone()
            return "linear", None, state
        weight = (w2.double() @ w1.double()).to(w1.dtype)
        state = {"proj.weight": weight}
        if b1 is not None or b2 is not None:
            bias = torch.zeros(w2.shape[0], dtype=torch.float64, device=w2.device)
            if b1 is not None:
                bias += w2.double() @ b1.double()
            if b2 is not None:
                bias += b2.double()
            state["proj.bias"] = bias.to(w1.dtype)
        return "linear", None, state
    # vlmplug's MLP always has biases; a bias-free projector is the same function with zero biases.
    state = {
        "proj.0.weight": w1.clone(),
        "proj.0.bias": b1.clone() if b1 is not None else w1.new_zeros(w1.shape[0]),
        "proj.2.weight": w2.clone(),
        "proj.2.bias": b2.clone() if b2 is not None else w2.new_zeros(w2.shape[0]),
    }
    return "mlp", _ACTS_FROM_HF[act], state


# ----------------------------------------------------------------------------------------------
# shared checks and the chat template
# ----------------------------------------------------------------------------------------------


def _check_square(image_size: Any, field: str) -> None:
    # vlmplug's tower computes its token count from one int image size (square inputs).
    if not isinstance(image_size, int):
        raise LlavaExportError(f"{field} is {image_size!r}; vlmplug supports a single int (square images)")


def _check_feature_layer(layer: int, num_layers: int, field: str) -> None:
    # hidden_states holds the embedding output and one entry per layer: num_layers + 1 entries.
    if not -(num_layers + 1) <= layer <= num_layers:
        raise LlavaExportError(f"{field} {layer} is out of range for a vision tower with {num_layers} layers")


def _llava_feature_layer(layer: int, num_layers: int) -> int:
    """The ``vision_feature_layer`` to write for vlmplug's ``feature_layer``.

    transformers 5.24 turns the layer index into ``output_hidden_states=<index>`` and treats a falsy
    value as "no hidden states", so index 0 (the embedding output) crashes LLaVA's forward. The same
    entry is addressed as ``-(num_layers + 1)``; every other index is written unchanged.
    """
    return -(num_layers + 1) if layer == 0 else int(layer)


def _check_image_processor(processor: Any, image_size: int, where: str, kind: str = "clip") -> None:
    """vlmplug's CLIP pipeline always resizes the shortest edge and centre-crops to the tower's input
    size, its SigLIP pipeline resizes straight to ``size`` with no crop; the LLaVA processor must do
    the same, or the two sides would see different pixels."""
    size = dict(getattr(processor, "size", None) or {})
    crop = dict(getattr(processor, "crop_size", None) or {})
    if kind == "siglip":
        if (size.get("height"), size.get("width")) != (image_size, image_size):
            raise LlavaExportError(
                f"{where}.size is {size}, but the SigLIP tower's image_size is {image_size} "
                f"(vlmplug resizes to {{'height': {image_size}, 'width': {image_size}}})"
            )
        if not getattr(processor, "do_resize", True) or getattr(processor, "do_center_crop", False):
            raise LlavaExportError(f"{where}: a SigLIP processor must resize (do_resize) and not crop (do_center_crop)")
        return
    if "shortest_edge" not in size:
        raise LlavaExportError(f"{where}.size is {size}; vlmplug resizes by {{'shortest_edge': N}} only")
    if not getattr(processor, "do_resize", True) or not getattr(processor, "do_center_crop", True):
        raise LlavaExportError(f"{where}: do_resize and do_center_crop must be true (vlmplug always does both)")
    if (crop.get("height"), crop.get("width")) != (image_size, image_size):
        raise LlavaExportError(f"{where}.crop_size is {crop}, but the vision tower's image_size is {image_size}")


def _as_int(value: Any) -> int:
    """``int(value)`` for a config field already checked to be an int."""
    return int(value)


def _check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise LlavaExportError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")


def _single_token_id(tokenizer: Any, token: str) -> int:
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise LlavaExportError(f"image token {token!r} is not a single token of the tokenizer (encodes to {ids})")
    return int(ids[0])


def _adapter(image_token: str) -> str:
    token = json.dumps(image_token)  # a valid Jinja string literal
    return (
        _ADAPTER_BEGIN
        + "{%- set _vlm = namespace(messages=[]) -%}"
        + "{%- for _m in messages -%}"
        + "{%- if _m['content'] is string or _m['content'] is none -%}"
        + "{%- set _vlm.messages = _vlm.messages + [_m] -%}"
        + "{%- else -%}"
        + "{%- set _c = namespace(text='') -%}"
        + "{%- for _part in _m['content'] -%}"
        + "{%- if _part['type'] == 'image' -%}{%- set _c.text = _c.text + "
        + token
        + " -%}"
        + "{%- elif _part['type'] == 'text' -%}{%- set _c.text = _c.text + _part['text'] -%}"
        + "{%- else -%}{{- raise_exception('unsupported content type: ' + _part['type']) -}}"
        + "{%- endif -%}"
        + "{%- endfor -%}"
        + "{%- set _vlm.messages = _vlm.messages + [dict(_m, content=_c.text)] -%}"
        + "{%- endif -%}"
        + "{%- endfor -%}"
        + "{%- set messages = _vlm.messages -%}"
        + _ADAPTER_END
    )


def wrap_chat_template(template: str, image_token: str) -> str:
    """Make a string-content chat template accept LLaVA processor messages.

    vlmplug messages carry plain-string content with the image token written in the text. Processor
    users write ``content=[{"type": "image"}, {"type": "text", "text": ...}]``. The wrapped template
    first turns every list content into a string (an image item becomes ``image_token``, text items
    their text, concatenated in order, nothing in between) and then runs ``template`` unchanged, so
    string-content messages render exactly as before.
    """
    return _adapter(image_token) + template


def unwrap_chat_template(template: str, image_token: str) -> str:
    """Inverse of :func:`wrap_chat_template`; other templates are returned unchanged."""
    adapter = _adapter(image_token)
    return template.removeprefix(adapter)
