"""Modality experts: CogVLM's visual expert (Wang et al. 2023, "CogVLM: Visual Expert for Pretrained
Language Models", section 2.1).

Vision tokens sit in the sequence exactly as with ``interleaved`` (this model subclasses
:class:`~vlmplug.plugins.fusion._interleaved.InterleavedVLM` for the embedding). In every decoder
layer, the position-wise modules named by ``expert_modules`` (default: the Llama attention
projections ``q/k/v/o_proj`` and MLP ``gate/up/down_proj``) get an *expert* copy, initialised from
the LLM's weights: image-token positions use the expert, text positions the original. The attention
itself (softmax over all positions) is shared, as in CogVLM. At initialisation the experts equal the
originals, so the model gives the base LLM's logits on text and the interleaved fusion's on images.

**How it attaches.** The LLM's module tree is left as it is (plain ``save_pretrained`` / peft
loading; peft's ``all-linear`` LoRA never reaches the experts): the experts live in
``vlm.fusion_modules`` (saved as ``fusion.safetensors``), and a forward hook on each matched module
replaces its output at image positions with the expert's output on those positions' inputs. The
hooks read the batch's image positions from the model, which sets them before calling the LLM and
clears them after; in ``generate`` they apply to the prompt only (later steps see only new text
positions). Called on its own, ``vlm.llm`` is the plain LLM. The hook sits on the outermost module
at each matched name, re-resolved on every call: once peft's LoRA wraps ``q_proj``, the hook moves
to the LoRA layer, so LoRA adapts the text weights only and merging the adapters keeps the outputs.

**Compute cost.** The original module runs on every position (its output at image positions is then
discarded) and the expert on the image positions: the matched modules cost about
``1 + image share`` times their plain cost (close to 2x when images fill most of the sequence, as
in CogVLM). The expert parameters double those of the matched modules (CogVLM-17B: a 10B expert on a
7B LLM).

**Trains.** ``keep_frozen = {"llm"}``: the experts and the connector train and the LLM stays frozen,
so text-only behaviour is exactly the base LLM's (CogVLM's choice), unless ``train_llm: true``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

import torch
from torch import nn

from ._cross_attention import LayerContextMixin, find_decoder_layers, match_batch, model_name
from ._interleaved import InterleavedFusion, InterleavedVLM

__all__ = ["ModalityExpertsFusion", "ModalityExpertsVLM", "build"]

COMPONENT = "modality-experts"


def _matches(name: str, suffixes: Sequence[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def _expert_key(name: str) -> str:
    return name.replace(".", "-")  # module names may not contain dots


class ModalityExpertsVLM(LayerContextMixin, InterleavedVLM):
    """Interleaved vision tokens, with image positions routed through expert copies of the LLM's
    attention projections and MLP."""

    def __init__(
        self,
        vision_encoder: nn.Module,
        connector: nn.Module,
        llm: Any,
        image_token_id: int,
        *,
        expert_modules: Sequence[str],
        train_llm: bool = False,
    ):
        super().__init__(vision_encoder, connector, llm, image_token_id)
        layers = find_decoder_layers(llm, COMPONENT)
        suffixes = [s.strip() for s in expert_modules]
        experts = nn.ModuleList()
        targets: list[tuple[int, str]] = []
        for index, layer in enumerate(layers):
            per_layer = nn.ModuleDict()
            taken: list[str] = []
            for name, module in layer.named_modules():
                if not name or not _matches(name, suffixes) or any(name.startswith(t + ".") for t in taken):
                    continue  # a module inside one that already has an expert: covered by that expert
                get_base = getattr(module, "get_base_layer", None)  # a peft-wrapped LLM (reloading)
                expert = copy.deepcopy(get_base() if callable(get_base) else module)
                for part in expert.modules():  # a copy of the weights, not of hooks someone put on the LLM
                    part._forward_hooks.clear()
                    part._forward_pre_hooks.clear()
                expert.requires_grad_(True)
                per_layer[_expert_key(name)] = expert
                targets.append((index, name))
                taken.append(name)
            experts.append(per_layer)
        if not targets:
            found = sorted({n.rsplit(".", 1)[-1] for n, m in layers[0].named_modules() if isinstance(m, nn.Linear)})
            raise ValueError(
                f"{COMPONENT}: no module of {type(layers[0]).__name__} (decoder layer of "
                f"{model_name(llm)}) matches expert_modules {suffixes}; its linear layers are {found}"
            )
        self.fusion_modules = experts
        self.keep_frozen = set() if train_llm else {"llm"}
        self._context = None
        self._claim_layers(llm, layers, COMPONENT)
        self._targets = targets
        self._hooked: dict[tuple[int, str], tuple[nn.Module, Any]] = {}
        self._attach()
        self._prefill_handle = layers[-1].register_forward_hook(self._after_last_layer)

    @property
    def expert_names(self) -> list[str]:
        """``"LAYER.NAME"`` of every module that has an image expert."""
        return [f"{i}.{name}" for i, name in self._targets]

    def _attach(self) -> None:
        """Hook the module now at each matched name (peft may have wrapped or unwrapped it since)."""
        for index, name in self._targets:
            current = self._decoder_layers[index].get_submodule(name)
            hooked = self._hooked.get((index, name))
            if hooked is not None and hooked[0] is current:
                continue
            if hooked is not None:
                hooked[1].remove()
            hook = functools.partial(self._expert_hook, index, _expert_key(name))
            self._hooked[(index, name)] = (current, current.register_forward_hook(hook, with_kwargs=True))

    def _expert_hook(
        self, index: int, key: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> Any:
        context = self._context
        mask = None if context is None else context.get("image_mask")
        if mask is None:
            return None
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"{COMPONENT}: {type(module).__name__} returns {type(output).__name__}, not a tensor; "
                "expert_modules must name position-wise modules (linear layers, MLPs)"
            )
        x = args[0] if args else next(iter(kwargs.values()))
        mask = match_batch(mask, output.shape[0], COMPONENT)
        if tuple(mask.shape) != tuple(output.shape[:2]):
            raise RuntimeError(
                f"{COMPONENT}: the image positions cover {tuple(mask.shape)} but {type(module).__name__} "
                f"sees {tuple(output.shape[:2])}"
            )
        experts = cast(nn.ModuleDict, self.fusion_modules[index])
        picked = experts[key](x[mask])
        return output.masked_scatter(mask.unsqueeze(-1), picked.to(output.dtype))

    def _after_last_layer(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        context = self._context
        if context is not None and context.get("generating"):
            context["image_mask"] = None  # the prompt is done; later steps see only new text positions

    def _image_mask(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        is_image = input_ids == self.image_token_id
        return is_image if bool(is_image.any()) else None

    def _llm_context(self, input_ids: torch.Tensor, generating: bool) -> AbstractContextManager[Any]:
        """Image positions route through the experts while the LLM runs (forward and generate are
        ``InterleavedVLM``'s)."""
        self._attach()
        return self._vision_context(image_mask=self._image_mask(input_ids), generating=generating)


class ModalityExpertsFusion(InterleavedFusion):
    """``placeholder_tokens`` as ``interleaved``: the connector's token budget per ``<image>``."""

    def __init__(self, config: Any = None):
        self.expert_modules: list[str] = list(config.expert_modules) if config is not None else []
        self.train_llm = bool(config.train_llm) if config is not None else False
        if not self.expert_modules:
            from .modality_experts import LLAMA_EXPERT_MODULES

            self.expert_modules = list(LLAMA_EXPERT_MODULES)

    def build(self, *, llm: Any, vision_encoder: Any, connector: Any, image_token_id: int) -> ModalityExpertsVLM:
        return ModalityExpertsVLM(
            vision_encoder,
            connector,
            llm,
            image_token_id,
            expert_modules=self.expert_modules,
            train_llm=self.train_llm,
        )


def build(config: Any, ctx: Any) -> ModalityExpertsFusion:
    return ModalityExpertsFusion(config)
