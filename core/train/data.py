"""From canonical samples to model inputs.

* the chat template renders the conversation; each assistant turn's character span is found by
  rendering the prefix with the generation prompt, so labels train **only assistant turns** (their
  closing end-of-turn token included) with any tokenizer that has offsets;
* each ``<image>`` token is expanded to the fusion's placeholder count; a sample whose placeholder
  count differs from its image count, or that is longer than ``max_seq_length``, is an error naming
  the row (or a counted skip with ``on_bad_sample: skip``);
* images are read lazily (paths, ``data:`` URIs, bytes or PIL images) and preprocessed per batch.
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmplug.errors import DataError

IGNORE_INDEX = -100

__all__ = ["IGNORE_INDEX", "SampleEncoder", "EncodedDataset", "TrainCollator", "load_image", "check_image",
           "spread_indices"]


def spread_indices(n: int, limit: int, seed: int = 0) -> list[int]:
    """Up to ``limit`` indices of ``range(n)``, drawn at random (a fixed stride could alias with a
    periodic dataset layout, e.g. question types assigned round-robin)."""
    if n <= limit:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def _where(sample: dict[str, Any], index: int, name: str) -> str:
    return str(sample.get("_where") or f"{name} sample {index}")


def load_image(ref: Any, where: str) -> Image.Image:
    """Open an image reference as RGB, or raise a DataError naming ``where``."""
    try:
        if isinstance(ref, Image.Image):
            img = ref
        elif isinstance(ref, (bytes, bytearray)):
            img = Image.open(io.BytesIO(ref))
        elif isinstance(ref, str) and ref.startswith("data:"):
            img = Image.open(io.BytesIO(base64.b64decode(ref.split(",", 1)[1])))
        elif isinstance(ref, str) and ref.startswith(("http://", "https://")):
            raise DataError(f"{where}: image URL {ref} -- download images first (vlmplug reads local files)")
        else:
            img = Image.open(ref)
        return img.convert("RGB")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{where}: image not found: {ref}; fix the path (relative to the data file) "
                        f"or set on_bad_sample: skip") from None
    except Exception as e:
        raise DataError(f"{where}: cannot read image {str(ref)[:120]}: {type(e).__name__}: {e}; replace the file "
                        f"or set on_bad_sample: skip") from None


def check_image(ref: Any, where: str) -> None:
    """Cheap up-front check: the file exists and its header parses (no full decode)."""
    if isinstance(ref, (Image.Image, bytes, bytearray)) or (isinstance(ref, str) and ref.startswith("data:")):
        return
    if not isinstance(ref, str):
        raise DataError(f"{where}: an image must be a path, data URI, bytes or PIL image, got {type(ref).__name__}")
    if ref.startswith(("http://", "https://")):
        raise DataError(f"{where}: image URL {ref} -- download images first (vlmplug reads local files)")
    if not Path(ref).is_file():
        raise DataError(f"{where}: image not found: {ref}; fix the path (relative to the data file) "
                        f"or set on_bad_sample: skip")
    try:
        with Image.open(ref) as im:
            im.size  # noqa: B018 - header parse
    except Exception as e:
        raise DataError(f"{where}: {ref} is not a readable image ({type(e).__name__}: {e}); replace it "
                        f"or set on_bad_sample: skip") from None


class SampleEncoder:
    """Tokenizes conversations with assistant-only labels and expanded image placeholders."""

    def __init__(self, tokenizer: Any, image_token: str, tokens_per_image: int, max_seq_length: int):
        self.tok = tokenizer
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.tokens_per_image = tokens_per_image
        self.max_seq_length = max_seq_length
        self._cache: dict[str, tuple[list[int], list[int]]] = {}

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _spans(self, messages: list[dict[str, str]], full: str, where: str) -> list[tuple[int, int]]:
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = self._render(messages[:i], True) if i else ""
            upto = self._render(messages[: i + 1], False)
            if not upto.startswith(prefix) or not full.startswith(upto):
                raise DataError(f"{where}: the chat template renders turns differently in prefixes, so assistant "
                                f"turns cannot be located; set chat_template: in the recipe")
            spans.append((len(prefix), len(upto)))
        return spans

    def _tokenize(self, messages: list[dict[str, str]], where: str) -> tuple[list[int], list[int]]:
        key = json.dumps(messages, sort_keys=True)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        full = self._render(messages, False)
        spans = self._spans(messages, full, where)
        enc = self.tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [t if any(s <= start < e for s, e in spans) else IGNORE_INDEX
                  for t, (start, _) in zip(ids, enc["offset_mapping"])]
        if len(self._cache) < 200_000:
            self._cache[key] = (ids, labels)
        return ids, labels

    def _expand(self, ids: list[int], labels: list[int] | None, n_images: int, where: str):
        n_slots = sum(1 for t in ids if t == self.image_token_id)
        if n_slots != n_images:
            raise DataError(f"{where}: {n_slots} '{self.image_token}' placeholder(s) in the text but {n_images} "
                            f"image(s); put one '{self.image_token}' in a message for each image")
        out_ids: list[int] = []
        out_labels: list[int] = []
        for j, t in enumerate(ids):
            if t == self.image_token_id:
                out_ids += [t] * self.tokens_per_image
                out_labels += [IGNORE_INDEX] * self.tokens_per_image
            else:
                out_ids.append(t)
                out_labels.append(labels[j] if labels is not None else IGNORE_INDEX)
        if len(out_ids) > self.max_seq_length:
            raise DataError(f"{where}: {len(out_ids)} tokens ({n_images} image(s) x {self.tokens_per_image}) exceed "
                            f"max_seq_length {self.max_seq_length}; raise max_seq_length or set on_bad_sample: skip")
        return out_ids, out_labels

    def encode(self, sample: dict[str, Any], where: str) -> tuple[list[int], list[int]]:
        ids, labels = self._tokenize(sample["messages"], where)
        out_ids, out_labels = self._expand(ids, labels, len(sample.get("images") or []), where)
        if all(lb == IGNORE_INDEX for lb in out_labels):
            raise DataError(f"{where}: no assistant tokens to train on")
        return out_ids, out_labels

    def encode_prompt(self, messages: list[dict[str, str]], n_images: int, where: str) -> list[int]:
        text = self._render(messages, True)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return self._expand(list(ids), None, n_images, where)[0]


class EncodedDataset(torch.utils.data.Dataset):
    """A training view of canonical samples: validated and tokenized up front, images read lazily."""

    def __init__(self, samples: Sequence[dict[str, Any]], encoder: SampleEncoder, name: str, skip_bad: bool,
                 progress: Callable[[int], None] | None = None):
        self.samples = samples
        self.items: list[tuple[int, list[int], list[int]]] = []
        self.skipped: list[str] = list(getattr(samples, "skipped", []))
        for i in range(len(samples)):
            sample = samples[i]
            where = _where(sample, i, name)
            try:
                for ref in sample.get("images") or []:
                    check_image(ref, where)
                ids, labels = encoder.encode(sample, where)
            except DataError as e:
                if not skip_bad:
                    raise
                self.skipped.append(str(e))
                continue
            self.items.append((i, ids, labels))
            if progress is not None:
                progress(1)
        if not self.items:
            raise DataError(f"{name}: no usable samples ({len(self.skipped)} skipped)")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i, ids, labels = self.items[k]
        sample = self.samples[i]
        where = _where(sample, i, "dataset")
        return {"input_ids": ids, "labels": labels,
                "images": [load_image(ref, where) for ref in sample.get("images") or []]}


class TrainCollator:
    """Right-pads ``input_ids``/``labels`` and preprocesses all images of the batch in order."""

    def __init__(self, pad_token_id: int, preprocess: Callable[[list[Image.Image]], torch.Tensor]):
        self.pad = pad_token_id
        self.preprocess = preprocess

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[r, :n] = torch.tensor(b["input_ids"])
            labels[r, :n] = torch.tensor(b["labels"])
            mask[r, :n] = 1
        images = [im for b in batch for im in b["images"]]
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if images:
            out["pixel_values"] = self.preprocess(images)
        return out
