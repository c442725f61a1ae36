"""The assembled vision-language model: vision tower -> connector -> fusion into the LLM.

Fusion components subclass :class:`VisionLanguageModel` and implement ``forward`` and
``generate`` (the contract is :class:`vlmplug.contracts.VisionLanguageModelContract`); saving and
the loss-normalisation contract with transformers' Trainer are shared here.

**Loss normalisation.** With gradient accumulation the Trainer counts the target tokens of the whole
accumulated batch (over all processes) and passes that count as ``num_items_in_batch``; a model
that declares ``accepts_loss_kwargs = True`` must return ``sum of token losses /
num_items_in_batch`` so that k micro-steps of batch b give exactly the loss and gradients of one
step of batch k*b (the Trainer then neither divides by k nor averages per micro-batch). Fusions
pass ``labels`` and ``num_items_in_batch`` on to the HF language model, whose causal-LM loss
implements exactly that. ``loss_type = "ForCausalLM"`` tells the Trainer the labels are shifted,
so it counts ``labels[:, 1:]``.

Layout of a saved model directory (see :mod:`vlmplug.train.model_io` for loading)::

    vlmplug_model.json          manifest: components with their options, LLM source, token ids
    vision_encoder.safetensors  the tower's weights, when they trained or were randomly initialised
    connector.safetensors
    fusion.safetensors          the modules a fusion adds (cross-attention blocks, experts), if any
    llm/ | adapter/ (+ llm_base/)   written by the PEFT method (plain transformers / peft folders)
    tokenizer/  processor/
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

__all__ = ["VisionLanguageModel", "MANIFEST", "trainable_state_dict", "unique_tensors"]

MANIFEST = "vlmplug_model.json"
MODEL_FORMAT_VERSION = 1


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop later names of tensors that share storage (tied weights), keep the first; contiguous CPU."""
    seen: set[tuple[int, object]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous().cpu()
    return out


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (``requires_grad``), by their state-dict names, de-duplicated."""
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    state = module.state_dict(keep_vars=True)
    return unique_tensors({k: v for k, v in state.items() if id(v) in trainable})


class VisionLanguageModel(nn.Module):
    """Base class of fused models. ``image_token_id`` marks vision positions in ``input_ids``."""

    accepts_loss_kwargs = True  # read by transformers' Trainer: we normalise by num_items_in_batch
    loss_type = "ForCausalLM"  # read by transformers' Trainer: labels are shifted, count labels[:, 1:]
    main_input_name = "input_ids"
    _keys_to_ignore_on_save: list[str] | None = None  # set per checkpoint by the trainer (frozen keys)

    def __init__(self, vision_encoder: nn.Module, connector: nn.Module, llm: nn.Module, image_token_id: int):
        super().__init__()
        self.vision_encoder = vision_encoder
        self.connector = connector
        self.llm = llm
        self.image_token_id = int(image_token_id)
        self.peft_method: Any = None  # set by the PEFT method; decides how the LLM is saved
        self.manifest: dict[str, Any] = {}
        self.tokenizer: Any = None  # attached by the run / loader, saved with the model
        #: New modules the fusion adds (e.g. gated cross-attention blocks); PEFT methods train them like
        #: the connector. ``keep_frozen``: parts the fusion wants frozen by default (e.g. {"llm"}).
        self.fusion_modules: nn.Module | None = None
        self.keep_frozen: set[str] = set()

    @property
    def config(self) -> Any:  # transformers' Trainer reads a few fields from model.config
        return self.llm.config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> VisionLanguageModel:
        """Load a saved model directory (a run's ``model/`` or a run directory): see :func:`vlmplug.load`."""
        from .model_io import load

        return load(path, **kwargs)

    def tie_weights(self, **_: Any) -> None:
        """Re-tie the LLM's tied weights (the Trainer calls this after loading a partial checkpoint)."""
        tie = getattr(self.llm, "tie_weights", None)
        if callable(tie):
            tie()

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        image_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pixel values of ``N_frames`` images -> LLM-width vision tokens ``[N_slots, T, H_llm]``.

        Without ``image_frames`` every image is a slot. With it (``long [N_slots]``, frames per slot,
        summing to ``N_frames``) a slot of ``F > 1`` frames -- a video, for a connector that takes whole
        videos (``max_frames > 1``) -- reaches the connector as ``[1, F, N, D]``; slots with equal
        ``F`` are batched. A text-conditioned connector also gets each slot's instruction tokens."""
        feats = self.vision_encoder(pixel_values)
        dtype = next((p.dtype for p in self.connector.parameters()), feats.dtype)
        feats = feats.to(dtype)
        if image_frames is None or bool((image_frames == 1).all()):
            return self._connect(feats, instruction_ids, instruction_mask)
        counts = [int(f) for f in image_frames.tolist()]
        if sum(counts) != feats.shape[0]:
            raise ValueError(f"image_frames sums to {sum(counts)} frames but pixel_values has {feats.shape[0]}")
        starts = [sum(counts[:i]) for i in range(len(counts))]
        out: list[torch.Tensor | None] = [None] * len(counts)
        for f in sorted(set(counts)):
            slots = [i for i, c in enumerate(counts) if c == f]
            group = torch.stack([feats[starts[i] : starts[i] + f] for i in slots])  # [G, F, N, D]
            ins = instruction_ids[slots] if instruction_ids is not None else None
            ins_mask = instruction_mask[slots] if instruction_mask is not None else None
            tokens = self._connect(group if f > 1 else group[:, 0], ins, ins_mask)
            for j, i in enumerate(slots):
                out[i] = tokens[j]
        return torch.stack([t for t in out if t is not None])

    #: ``None``: run the vision path on a batch without images only when training with several processes
    #: (see :meth:`idle_vision`); ``True`` / ``False`` force it on / off.
    run_idle_vision: bool | None = None

    def idle_vision(self, like: torch.Tensor) -> torch.Tensor:
        """A zero that depends on the vision tower and connector, for a training batch with no image.

        With several processes every rank must run the same modules: under DeepSpeed ZeRO-3 each module's
        forward gathers its sharded parameters with a collective, so a rank whose batch has no image and
        skips the vision path leaves the others waiting in the tower's gather (a hang); under DDP its
        tower gets no gradient. Adding ``0 x`` the vision tokens of one blank image keeps every rank on
        the same path and changes no value. Elsewhere it is a plain zero."""
        run = self.run_idle_vision
        if run is None:
            run = self.training and torch.is_grad_enabled() and _several_processes()
        if not run:
            return like.new_zeros(())
        from PIL import Image

        tower: Any = self.vision_encoder  # the family contract's preprocess, not a torch.nn.Module member
        pixels = tower.preprocess([Image.new("RGB", (32, 32))]).to(like.device)
        extra: dict[str, Any] = {}
        if "instruction_ids" in inspect.signature(self.connector.forward).parameters:  # text-conditioned
            ids = torch.zeros((1, 1), dtype=torch.long, device=like.device)
            extra = {"instruction_ids": ids, "instruction_mask": torch.ones_like(ids)}
        vision = self.encode_images(pixels, **extra)
        return (vision.sum() * 0).to(like.dtype)

    def _connect(
        self, feats: torch.Tensor, instruction_ids: torch.Tensor | None, instruction_mask: torch.Tensor | None
    ) -> torch.Tensor:
        if instruction_ids is not None:
            return self.connector(feats, instruction_ids=instruction_ids, instruction_mask=instruction_mask)
        return self.connector(feats)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def save_pretrained(self, directory: str | Path, **_: Any) -> None:
        """Write every part with safetensors (the caller makes the write atomic)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        enc = self.vision_encoder
        parts: dict[str, str] = {"connector": "connector.safetensors"}
        if (
            getattr(enc, "weights_source", None) is None
            or self.manifest.get("save_vision_encoder")
            or any(p.requires_grad for p in enc.parameters())
        ):
            save_file(
                unique_tensors(enc.state_dict()),
                str(directory / "vision_encoder.safetensors"),
                metadata={"format": "pt"},
            )
            parts["vision_encoder"] = "vision_encoder.safetensors"
        save_file(
            unique_tensors(self.connector.state_dict()),
            str(directory / "connector.safetensors"),
            metadata={"format": "pt"},
        )
        if self.fusion_modules is not None:
            save_file(
                unique_tensors(self.fusion_modules.state_dict()),
                str(directory / "fusion.safetensors"),
                metadata={"format": "pt"},
            )
            parts["fusion"] = "fusion.safetensors"
        if self.peft_method is not None:
            llm_files = self.peft_method.save_llm(self, str(directory))
        else:  # a merged / plain LLM
            llm: Any = self.llm
            llm.save_pretrained(directory / "llm")
            llm_files = {"llm": "llm"}
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory / "tokenizer")
        processor = getattr(enc, "image_processor", None)
        if processor is not None:
            processor.save_pretrained(directory / "processor")
        manifest = {
            **self.manifest,
            "format_version": MODEL_FORMAT_VERSION,
            "image_token_id": self.image_token_id,
            "parts": parts,
            "llm_files": llm_files,
        }
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))


def _several_processes() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
