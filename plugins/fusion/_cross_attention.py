"""Gated cross-attention fusion (Flamingo, Alayrac et al. 2022, "Flamingo: a Visual Language Model for
Few-Shot Learning", section 3.1 and figure 4; the same block as Idefics1).

**Text stream.** Each ``<image>`` is one marker position (``placeholder_tokens = 1``) whose input
embedding is a learned vector (initialised to the mean of the LLM's input embeddings, the usual
neutral start for a new token); the image token id may lie past the vocabulary, as with
``interleaved``. The vision tokens (the connector's output, ``[N_img, T, H]``) are *not* in the text
stream: every text position reads them through cross-attention.

**Blocks.** Before decoder layers ``0, n, 2n, ...`` (``every_n_layers``) a GATED XATTN-DENSE block
updates the hidden states::

    x = x + tanh(alpha_attn) * CrossAttention(LayerNorm(x), vision)
    x = x + tanh(alpha_ffw)  * FFW(LayerNorm(x))            # Linear -> GELU -> Linear

with ``alpha_attn = alpha_ffw = 0`` at initialisation (``gate_init``), so the model starts exactly
as the LLM (``tanh(0) * finite = 0``) and the first step moves only the gates (and the marker): the
rest of each block and the connector get gradient once the gates are open. As in Idefics1, the
dense half applies to every text position; a row's result never depends on what else is in the
batch.

**Which images a token sees.** Every text position attends to all images of its own sample.
Flamingo lets a token see only the image immediately before it, which suits long interleaved web
documents; the instruction data this framework trains on has one or a few images per sample and
puts text before the image (``"Compare <image> and <image>"``), where the Flamingo rule would hide
an image from the words that refer to it. Attending to the whole sample also keeps cached
generation exact with no position bookkeeping: a generated token sees the same images as the
prompt. Rows without images attend to nothing (masked; the result is zeroed and stays finite).

**How it attaches.** The LLM's module tree is left as it is (it saves with plain
``save_pretrained``, loads with plain transformers / peft, and peft's ``all-linear`` LoRA never
reaches the new blocks): the blocks and the marker live in ``vlm.fusion_modules`` (saved as
``fusion.safetensors``) and run from forward pre-hooks on the chosen decoder layers, which read the
current batch's vision tokens from the model. The model sets them before calling the LLM and clears
them after (also in ``generate``, whose later steps see only the new text positions); called on its
own, ``vlm.llm`` is the plain LLM. Under activation checkpointing the context is kept until the
next call, since the backward pass may replay the layers. The blocks run outside transformers'
checkpointed ``forward``, so their activations are stored, not recomputed. The hooks belong to one model
object: run one model per process (``torchrun`` / DDP), not ``torch.nn.DataParallel``, whose
replicas the hooks would not see. An LLM carries the hooks of one fusion model only.

**Trains.** ``keep_frozen = {"llm"}``: only the blocks, the marker and the connector (and whatever
the PEFT method adds) train, as in Flamingo, unless ``train_llm: true``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlmplug.train.vlm import VisionLanguageModel

__all__ = [
    "CrossAttentionFusion",
    "CrossAttentionModules",
    "CrossAttentionVLM",
    "GatedCrossAttentionBlock",
    "LayerContextMixin",
    "build",
    "find_decoder_layers",
    "match_batch",
    "model_name",
]


def model_name(llm: Any) -> str:
    """The class name of a transformers model, through a peft wrapper."""
    base = llm.get_base_model() if callable(getattr(llm, "get_base_model", None)) else llm
    return type(base).__name__


def find_decoder_layers(llm: Any, component: str) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM, found generically (also inside a peft model):
    the first ``nn.ModuleList`` of ``config.num_hidden_layers`` modules of one class (``model.layers``
    for Llama / Mistral / Qwen2, ``transformer.h`` for GPT-2, ``gpt_neox.layers``, ...)."""
    config: Any = getattr(llm, "config", None)
    text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
    n = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    for module in llm.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if n is not None and len(module) != n:
            continue
        if len({type(m) for m in module}) == 1:
            return module
    raise ValueError(
        f"{component}: cannot find the decoder layers of {model_name(llm)} (looked for a torch.nn.ModuleList of "
        f"config.num_hidden_layers = {n} modules of one class, like Llama's model.layers); this fusion needs a "
        f"decoder-only transformers LLM"
    )


def match_batch(tensor: torch.Tensor, batch: int, component: str) -> torch.Tensor:
    """``tensor`` (first dim = the model's batch) for a layer that sees ``batch`` rows: the same, or each
    row repeated in place when generation expanded the batch (beams, ``num_return_sequences``)."""
    rows = tensor.shape[0]
    if rows == batch:
        return tensor
    if rows and batch % rows == 0:
        return tensor.repeat_interleave(batch // rows, dim=0)
    raise RuntimeError(f"{component}: the LLM runs on {batch} rows but the vision context has {rows}")


class LayerContextMixin:
    """The per-call context that hooks on the LLM's modules read: set by the model before it calls
    the LLM, cleared after (kept until the next call when activation checkpointing will replay the
    layers in the backward pass). ``None``: the hooks do nothing and the LLM is its plain self."""

    _context: dict[str, Any] | None
    _decoder_layers: tuple[nn.Module, ...]

    def _claim_layers(self, llm: Any, layers: nn.ModuleList, component: str) -> None:
        """Remember the LLM's decoder layers; refuse an LLM that another fusion model already hooks (its
        hooks would run twice)."""
        owner = getattr(layers[0], "_vlmplug_fusion_hooks", None)
        if owner is not None:
            raise ValueError(
                f"{component}: this {model_name(llm)} already carries the hooks of a {owner} model; "
                f"build each fusion model from its own LLM"
            )
        first: Any = layers[0]
        first._vlmplug_fusion_hooks = component  # a plain attribute: not in any state dict
        self._decoder_layers = tuple(layers)

    def _replays_layers(self) -> bool:
        return torch.is_grad_enabled() and any(
            getattr(m, "gradient_checkpointing", False) for m in self._decoder_layers
        )

    @contextmanager
    def _vision_context(self, **context: Any) -> Iterator[dict[str, Any]]:
        self._context = context
        try:
            yield context
        finally:
            if context.get("generating") or not self._replays_layers():
                self._context = None


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo's GATED XATTN-DENSE block: tanh-gated cross-attention to the vision tokens, then a
    tanh-gated feed-forward layer, both residual, both gates 0 at initialisation."""

    def __init__(self, hidden_size: int, num_heads: int, ffw_mult: int, gate_init: float = 0.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"cross-attention: num_heads {num_heads} does not divide the LLM width {hidden_size}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.attn_norm = nn.LayerNorm(hidden_size)
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.attn_gate = nn.Parameter(torch.full((1,), float(gate_init)))
        self.ffw_norm = nn.LayerNorm(hidden_size)
        self.ffw_in = nn.Linear(hidden_size, ffw_mult * hidden_size, bias=False)
        self.ffw_out = nn.Linear(ffw_mult * hidden_size, hidden_size, bias=False)
        self.ffw_gate = nn.Parameter(torch.full((1,), float(gate_init)))

    def cross_attention(self, x: torch.Tensor, vision: torch.Tensor, vision_mask: torch.Tensor) -> torch.Tensor:
        """``x [B, L, H]`` attends to ``vision [B, M, H]`` where ``vision_mask [B, M]`` is true; rows
        with no vision token get zeros."""
        b, length, hidden = x.shape
        m = vision.shape[1]
        vision = vision.to(x.dtype)
        q = self.q_proj(self.attn_norm(x)).view(b, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(vision).view(b, m, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(vision).view(b, m, self.num_heads, self.head_dim).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)).float() * self.head_dim**-0.5
        # masked with the lowest finite value, not -inf: a row with no image gets a finite (uniform)
        # softmax, which the next line zeroes
        scores = scores.masked_fill(~vision_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        out = scores.softmax(-1).to(v.dtype) @ v
        out = out * vision_mask.any(-1).to(out.dtype)[:, None, None, None]
        return self.o_proj(out.transpose(1, 2).reshape(b, length, hidden))

    def forward(
        self, x: torch.Tensor, vision: torch.Tensor | None = None, vision_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if vision is not None and vision_mask is not None and vision.shape[1]:
            x = x + torch.tanh(self.attn_gate).to(x.dtype) * self.cross_attention(x, vision, vision_mask)
        dense = self.ffw_out(F.gelu(self.ffw_in(self.ffw_norm(x))))
        return x + torch.tanh(self.ffw_gate).to(x.dtype) * dense


class CrossAttentionModules(nn.Module):
    """What the fusion adds (``vlm.fusion_modules``): the ``<image>`` marker embedding and one block per
    chosen decoder layer, keyed by the layer's index."""

    def __init__(
        self,
        hidden_size: int,
        layer_indices: list[int],
        num_heads: int,
        ffw_mult: int,
        marker: torch.Tensor,
        gate_init: float = 0.0,
    ):
        super().__init__()
        self.image_marker = nn.Parameter(marker.detach().clone())
        self.blocks = nn.ModuleDict(
            {str(i): GatedCrossAttentionBlock(hidden_size, num_heads, ffw_mult, gate_init) for i in layer_indices}
        )


class CrossAttentionVLM(LayerContextMixin, VisionLanguageModel):
    """A decoder LLM with Flamingo gated cross-attention blocks hooked in before every n-th layer."""

    def __init__(
        self,
        vision_encoder: nn.Module,
        connector: nn.Module,
        llm: Any,
        image_token_id: int,
        *,
        every_n_layers: int = 4,
        num_heads: int = 0,
        ffw_mult: int = 4,
        gate_init: float = 0.0,
        train_llm: bool = False,
    ):
        super().__init__(vision_encoder, connector, llm, image_token_id)
        layers = find_decoder_layers(llm, "cross-attention")
        config: Any = llm.config
        text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
        embeddings = llm.get_input_embeddings().weight
        hidden = int(embeddings.shape[1])
        heads = num_heads or int(text.num_attention_heads)
        indices = list(range(0, len(layers), every_n_layers))
        marker = embeddings.detach().float().mean(0)
        modules = CrossAttentionModules(hidden, indices, heads, ffw_mult, marker, gate_init)
        self.fusion_modules = modules.to(device=embeddings.device, dtype=embeddings.dtype)
        self.keep_frozen = set() if train_llm else {"llm"}
        self._context = None
        self._claim_layers(llm, layers, "cross-attention")
        self._hook_handles = [
            layers[i].register_forward_pre_hook(functools.partial(self._before_layer, str(i)), with_kwargs=True)
            for i in indices
        ]

    @property
    def block_layers(self) -> list[int]:
        """Indices of the decoder layers that a gated cross-attention block precedes."""
        return [int(k) for k in self.fusion_modules.blocks]

    def _before_layer(
        self, key: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        context = self._context
        if context is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        vision, mask = context["vision"], context["vision_mask"]
        if vision is not None:
            vision = match_batch(vision, hidden.shape[0], "cross-attention")
            mask = match_batch(mask, hidden.shape[0], "cross-attention")
        out = self.fusion_modules.blocks[key](hidden, vision, mask)
        if args:
            return (out, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": out}

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The LLM's token embeddings, with the learned marker at ``<image>`` positions."""
        is_image = input_ids == self.image_token_id
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        if bool(is_image.any()):
            marker = self.fusion_modules.image_marker.to(embeds.dtype)
            embeds = torch.where(is_image.unsqueeze(-1), marker, embeds)
        return embeds

    def vision_context(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        image_frames: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Each row's vision tokens, ``[B, max_images * T, H]``, and which are real, ``[B, max_images * T]``;
        images are assigned to rows in the order of their markers. ``(None, None)`` without images."""
        per_row = (input_ids == self.image_token_id).sum(1)
        n_markers = int(per_row.sum())
        if pixel_values is None or pixel_values.numel() == 0:
            if n_markers:
                raise ValueError(f"the batch has {n_markers} <image> markers but no pixel_values")
            return None, None
        vision = self.encode_images(pixel_values, instruction_ids, instruction_mask, image_frames)  # [N_img, T, H]
        if vision.shape[0] != n_markers:
            raise ValueError(f"the batch has {n_markers} <image> markers but {vision.shape[0]} images")
        _, tokens, hidden = vision.shape
        most = int(per_row.max())
        slots = torch.arange(most, device=per_row.device)[None, :] < per_row[:, None]  # [B, most]
        padded = vision.new_zeros(input_ids.shape[0], most, tokens, hidden)
        padded[slots] = vision
        mask = slots[:, :, None].expand(-1, -1, tokens).reshape(input_ids.shape[0], most * tokens)
        return padded.reshape(input_ids.shape[0], most * tokens, hidden), mask

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        image_frames: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        embeds = self.embed(input_ids)
        vision, mask = self.vision_context(input_ids, pixel_values, instruction_ids, instruction_mask, image_frames)
        if vision is None:
            embeds = embeds + self.idle_vision(embeds)  # 0, but every rank runs the vision path
        if labels is not None and num_items_in_batch is not None:
            kwargs["num_items_in_batch"] = num_items_in_batch  # the HF causal-LM loss: sum / num_items
        with self._vision_context(vision=vision, vision_mask=mask):
            return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        image_frames: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        embeds = self.embed(input_ids)
        vision, mask = self.vision_context(input_ids, pixel_values, instruction_ids, instruction_mask, image_frames)
        with self._vision_context(vision=vision, vision_mask=mask, generating=True):
            return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)


class CrossAttentionFusion:
    def __init__(self, config: Any = None):
        self.options: dict[str, Any] = (
            {}
            if config is None
            else {
                "every_n_layers": config.every_n_layers,
                "num_heads": config.num_heads,
                "ffw_mult": config.ffw_mult,
                "gate_init": config.gate_init,
                "train_llm": config.train_llm,
            }
        )

    def placeholder_tokens(self, connector: Any) -> int:
        return 1  # one marker per <image>; the vision tokens stay out of the text stream

    def build(self, *, llm: Any, vision_encoder: Any, connector: Any, image_token_id: int) -> CrossAttentionVLM:
        return CrossAttentionVLM(vision_encoder, connector, llm, image_token_id, **self.options)


def build(config: Any, ctx: Any) -> CrossAttentionFusion:
    return CrossAttentionFusion(config)
