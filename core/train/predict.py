"""A saved model, ready to answer: what ``vlmplug eval``, ``chat`` and ``serve`` share.

:class:`Predictor` loads a run directory or a saved ``model/`` folder through :func:`.model_io.load`
(the same plugins that built it), rebuilds the tokenizer side of the data pipeline from the saved
manifest (image placeholders, chat template, video sampling), and generates for conversations in the
canonical sample form (``{"messages": [...], "images": [...]}``; an image is a path, a ``data:`` URI,
bytes or a PIL image): greedy or sampled (``temperature``, ``top_p``), with stop strings, in batches
(left-padded) or streamed token by token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from vlmplug.errors import ConfigError

from .data import load_media, pad_instructions

__all__ = ["Completion", "Predictor", "Sampling", "pick_device"]


@dataclass(frozen=True)
class Sampling:
    """How to decode. ``temperature`` 0 is greedy (deterministic); above 0 samples, with ``top_p``
    nucleus filtering; ``stop``: generation ends at the first of these strings (not returned)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens {self.max_new_tokens}: must be at least 1", header="generation")
        if self.temperature < 0:
            raise ConfigError(f"temperature {self.temperature}: must be 0 (greedy) or more", header="generation")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p {self.top_p}: must be in (0, 1]", header="generation")

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


@dataclass
class Completion:
    """One generated answer: its text, why it ended (``stop``: end of turn or a stop string;
    ``length``: ``max_new_tokens`` reached) and the token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Prepared:
    ids: list[int]
    images: list[Any]
    frames: list[int]
    instructions: list[list[int]] = field(default_factory=list)


def pick_device(device: str | None) -> str:
    """``auto`` / None: CUDA when available, else Apple MPS, else CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    return str(device)


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class Predictor:
    """A loaded model with its tokenizer, sample encoder and image preprocessing."""

    def __init__(
        self,
        vlm: Any,
        encoder: Any,
        name: str,
        *,
        tokenizer: Any = None,
        preprocess: Callable[[list[Image.Image]], torch.Tensor] | None = None,
    ):
        self.vlm = vlm
        self.encoder = encoder
        self.tokenizer = vlm.tokenizer if tokenizer is None else tokenizer
        self.preprocess = vlm.vision_encoder.preprocess if preprocess is None else preprocess
        #: The model's name (``/v1/models``; the run or model directory's name).
        self.name = name
        #: Generation is not re-entrant: concurrent callers (a server's requests) take turns.
        self.lock = threading.Lock()

    @classmethod
    def load(cls, path: str, *, device: str | None = None, host: Any = None, name: str | None = None) -> Predictor:
        """Load a run directory or saved model folder (see :func:`vlmplug.train.model_io.load`)."""
        from pathlib import Path

        from transformers.utils import logging as hf_logging

        from vlmplug.manager import load as load_plugins

        from .assemble import make_sample_encoder
        from .model_io import find_model_dir, load, selections_from_manifest

        hf_logging.disable_progress_bar()  # the weight-loading bar: our commands print their own progress
        host = host or load_plugins()
        model_dir = find_model_dir(path)
        vlm = load(model_dir, host=host, device=pick_device(device))
        manifest = vlm.manifest
        single = selections_from_manifest(manifest["components"], host.registry, str(model_dir))
        core = {"on_overlength": "error", **manifest["core"]}
        # a prompt may be as long as the LLM's positions allow (training's max_seq_length bounds memory)
        limit = getattr(getattr(vlm.llm, "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and limit > core["max_seq_length"]:
            core["max_seq_length"] = limit
        encoder = make_sample_encoder(core, single, vlm, vlm.tokenizer)
        folder = Path(path).resolve()
        return cls(vlm, encoder, name or (folder.parent.name if folder.name == "model" else folder.name))

    # -- preparing ---------------------------------------------------------------------------------

    def prepare(self, sample: dict[str, Any], messages: list[dict[str, str]] | None = None) -> _Prepared:
        """Token ids of ``messages`` (default: the sample's) ending in the generation prompt, and the
        sample's media in slot order. Raises DataError naming ``sample["_where"]`` on bad input."""
        where = str(sample.get("_where") or "request")
        messages = list(sample["messages"] if messages is None else messages)
        ids, slots = self.encoder.encode_prompt(messages, sample, where)
        images, frames = load_media(sample, slots, where)
        instructions = self.encoder.instructions(messages, slots) if self.encoder.with_instructions else []
        return _Prepared(ids, images, frames, instructions)

    # -- generating --------------------------------------------------------------------------------

    def _inputs(self, batch: Sequence[_Prepared]) -> tuple[torch.Tensor, torch.Tensor, Any, dict[str, Any]]:
        pad = self.tokenizer.pad_token_id
        width = max(len(p.ids) for p in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(batch):  # left padding: every prompt ends where generation starts
            ids[r, width - len(p.ids) :] = torch.tensor(p.ids)
            mask[r, width - len(p.ids) :] = 1
        device = self.vlm.device
        images = [img for p in batch for img in p.images]
        frames = [f for p in batch for f in p.frames]
        pixel_values = self.preprocess(images).to(device) if images else None
        extra: dict[str, Any] = {}
        instructions = [row for p in batch for row in p.instructions]
        if instructions:
            ins, ins_mask = pad_instructions(instructions, pad)
            extra = {"instruction_ids": ins.to(device), "instruction_mask": ins_mask.to(device)}
        if any(f != 1 for f in frames):
            extra["image_frames"] = torch.tensor(frames, dtype=torch.long, device=device)
        return ids.to(device), mask.to(device), pixel_values, extra

    def _kwargs(self, sampling: Sampling) -> dict[str, Any]:
        kwargs = {
            "max_new_tokens": sampling.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            **sampling.generate_kwargs(),
        }
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        return kwargs

    @torch.no_grad()
    def generate_ids(self, batch: Sequence[_Prepared], sampling: Sampling, **extra: Any) -> torch.Tensor:
        """The new token ids for each prepared prompt (one row each, padded after the end)."""
        ids, mask, pixel_values, media = self._inputs(batch)
        with self.lock:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            return self.vlm.generate(ids, mask, pixel_values, **media, **self._kwargs(sampling), **extra)

    def complete(self, batch: Sequence[_Prepared], sampling: Sampling) -> list[Completion]:
        """Generate for each prepared prompt; texts cut at the end of turn or the first stop string."""
        out = self.generate_ids(batch, sampling)
        done = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        results = []
        for p, row in zip(batch, out.tolist()):
            n = next((i for i, t in enumerate(row) if t in done), len(row))
            text, stopped = _cut_at_stop(self.tokenizer.decode(row[:n], skip_special_tokens=True), sampling.stop)
            ended = stopped or n < len(row) or n < sampling.max_new_tokens
            results.append(Completion(text, "stop" if ended else "length", len(p.ids), n))
        return results

    def stream(self, prepared: _Prepared, sampling: Sampling) -> Iterator[str]:
        """Yield the answer's text piece by piece as it is generated (stop strings cut, not returned);
        afterwards :attr:`last_completion` holds the whole :class:`Completion`."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=False, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["ids"] = self.generate_ids([prepared], sampling, streamer=streamer)
            except BaseException as e:
                result["error"] = e
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        text, sent = "", 0
        stopped = False
        for piece in streamer:
            text += piece
            cut, stopped = _cut_at_stop(text, sampling.stop)
            keep = len(cut) if stopped else len(cut) - max((len(s) - 1 for s in sampling.stop), default=0)
            if keep > sent:  # hold back what could be the start of a stop string
                yield cut[sent:keep]
                sent = keep
            if stopped:
                break
        thread.join()
        if "error" in result:
            raise result["error"]
        final, stopped = _cut_at_stop(text, sampling.stop)
        if len(final) > sent:
            yield final[sent:]
        row = result["ids"][0].tolist()
        done = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        n = next((i for i, t in enumerate(row) if t in done), len(row))
        ended = stopped or n < len(row) or n < sampling.max_new_tokens
        self.last_completion = Completion(final, "stop" if ended else "length", len(prepared.ids), n)
