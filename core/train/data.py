"""From canonical samples to model inputs.

* the chat template renders the conversation; each assistant turn's character span is found by
  rendering the prefix with the generation prompt, so labels train **only assistant turns** (their
  closing end-of-turn token included) with any tokenizer that has offsets;
* each ``<image>`` token is expanded to the fusion's placeholder count; a sample whose placeholder
  count differs from its image count, or that is longer than ``max_seq_length``, is an error naming
  the row (or a counted skip with ``on_bad_sample: skip``);
* each ``<video>`` (one per entry of ``videos``, see :mod:`.video`) becomes image slots: one slot of
  all its sampled frames when the connector takes whole videos (``max_frames > 1``: the perceiver
  compresses frames x patches to its budget), else one slot per frame, like consecutive images;
* images are read lazily (paths, ``data:`` URIs, bytes or PIL images) and preprocessed per batch;
  rows are checked cheaply up front (keys, placeholders, files exist, image headers) and fully when
  loaded. What fails late follows the same ``on_bad_sample`` policy as what fails early: under
  ``skip`` the sample is replaced by the next good one and the skip travels with the batch to the
  run's :class:`~vlmplug.errors.SkipReport`.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmplug.contracts import LazyImage
from vlmplug.errors import DataError

from .video import VIDEO_TOKEN, VideoOptions, probe, read_frames

IGNORE_INDEX = -100

__all__ = [
    "pad_instructions",
    "IGNORE_INDEX",
    "SKIPPED_KEY",
    "STATS_KEY",
    "SampleEncoder",
    "EncodedDataset",
    "TrainCollator",
    "load_image",
    "check_image",
    "load_media",
    "spread_indices",
    "sample_texts",
]

#: Kinds of image slot (see :meth:`SampleEncoder.plan`): an image, or frames of a video.
IMAGE_SLOT, VIDEO_SLOT = "image", "frames"

#: Batch key carrying the skips of a batch (popped by the trainer before the model sees the batch).
SKIPPED_KEY = "vlmplug_skipped"

#: Batch key carrying counts a collator made for its batch (``{name: number}``, e.g. packing's real
#: tokens and row slots). The trainer pops them and sums them over the batches trained on, in the main
#: process -- a collator running in a DataLoader worker cannot keep them itself -- and the collator's
#: ``summarize(totals)`` turns the sums into the run's metrics.
STATS_KEY = "vlmplug_batch_stats"


def spread_indices(n: int, limit: int, seed: int = 0) -> list[int]:
    """Up to ``limit`` indices of ``range(n)``, drawn at random (a fixed stride could alias with a
    periodic dataset layout, e.g. question types assigned round-robin)."""
    if n <= limit:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def _where(sample: dict[str, Any], index: int, name: str) -> str:
    return str(sample.get("_where") or f"{name} sample {index}")


def sample_texts(samples: Sequence[dict[str, Any]], limit: int = 5000) -> list[str]:
    """The message texts of (a random subset of) ``samples``, e.g. to train a tokenizer."""
    return [m["content"] for i in spread_indices(len(samples), limit) for m in samples[i]["messages"]]


def _missing(where: str, ref: Any) -> DataError:
    return DataError(
        f"{where}: image not found: {ref}; fix the path (relative to the data file) or set on_bad_sample: skip",
        reason="missing-image",
        where=where,
    )


def _url(where: str, ref: str) -> DataError:
    return DataError(
        f"{where}: image URL {ref} -- download images first (vlmplug reads local files)",
        reason="image-url",
        where=where,
    )


def _bomb(where: str, ref: Any, size: tuple[int, int] | None) -> DataError:
    limit = Image.MAX_IMAGE_PIXELS
    dims = f"{size[0]} x {size[1]} pixels" if size else "too many pixels"
    return DataError(
        f"{where}: image {str(ref)[:120]} is {dims}, more than PIL's decompression-bomb limit of {limit} "
        f"(PIL.Image.MAX_IMAGE_PIXELS); resize it, or raise the limit if you trust the file",
        reason="decompression-bomb",
        where=where,
    )


def _check_pixels(img: Image.Image, ref: Any, where: str) -> None:
    """Refuse an image whose header declares more pixels than PIL's bomb limit, before it is decoded
    (PIL itself only warns below twice the limit)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.size[0] * img.size[1] > limit:
        raise _bomb(where, ref, img.size)


def load_image(ref: Any, where: str) -> Image.Image:
    """Open an image reference as RGB, or raise a DataError naming ``where``."""
    try:
        if isinstance(ref, Image.Image):
            img = ref
        elif isinstance(ref, LazyImage):
            img = ref.open()
        elif isinstance(ref, (bytes, bytearray)):
            img = Image.open(io.BytesIO(ref))
        elif isinstance(ref, str) and ref.startswith("data:"):
            img = Image.open(io.BytesIO(base64.b64decode(ref.split(",", 1)[1])))
        elif isinstance(ref, str) and ref.startswith(("http://", "https://")):
            raise _url(where, ref)
        else:
            img = Image.open(ref)
        _check_pixels(img, ref, where)
        return img.convert("RGB")
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise _bomb(where, ref, None) from None
    except FileNotFoundError:
        raise _missing(where, ref) from None
    except Exception as e:
        raise DataError(
            f"{where}: cannot read image {str(ref)[:120]}: {type(e).__name__}: {e}; replace the file "
            f"or set on_bad_sample: skip",
            reason="unreadable-image",
            where=where,
        ) from None


def check_image(ref: Any, where: str) -> None:
    """Cheap up-front check: the file exists and its header parses (no full decode)."""
    if isinstance(ref, LazyImage):
        ref = ref.path
    if isinstance(ref, (Image.Image, bytes, bytearray)) or (isinstance(ref, str) and ref.startswith("data:")):
        return
    if not isinstance(ref, str):
        raise DataError(
            f"{where}: an image must be a path, data URI, bytes, a PIL image or a LazyImage, got {type(ref).__name__}",
            reason="malformed-row",
            where=where,
        )
    if ref.startswith(("http://", "https://")):
        raise _url(where, ref)
    if not Path(ref).is_file():
        raise _missing(where, ref)
    try:
        with Image.open(ref) as im:
            _check_pixels(im, ref, where)  # the header's size: nothing is decoded here
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise _bomb(where, ref, None) from None
    except Exception as e:
        raise DataError(
            f"{where}: {ref} is not a readable image ({type(e).__name__}: {e}); replace it or set on_bad_sample: skip",
            reason="unreadable-image",
            where=where,
        ) from None


class SampleEncoder:
    """Tokenizes conversations with assistant-only labels and expanded image placeholders."""

    def __init__(
        self,
        tokenizer: Any,
        image_token: str,
        tokens_per_image: int,
        max_seq_length: int,
        with_instructions: bool = False,
        max_instruction_tokens: int = 64,
        video: VideoOptions | None = None,
        video_per_slot: bool = False,
        on_overlength: str = "error",
    ):
        self.tok = tokenizer
        #: ``truncate-text``, ``skip`` or ``error``: what :meth:`encode` does with an over-long sample.
        self.on_overlength = on_overlength
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.tokens_per_image = tokens_per_image
        self.max_seq_length = max_seq_length
        self.with_instructions = with_instructions
        self.max_instruction_tokens = max_instruction_tokens
        self.video = video or VideoOptions()
        #: True: a video fills one slot with all its frames (the connector takes [F, N, D]).
        self.video_per_slot = video_per_slot
        self._placeholders = re.compile(f"({re.escape(image_token)}|{re.escape(VIDEO_TOKEN)})")
        self._cache: dict[str, tuple[list[int], list[int]]] = {}
        #: Most conversations whose tokens :meth:`encode` keeps for reuse (0 under streaming, whose
        #: memory must not grow with the data).
        self.cache_limit = 200_000
        #: Tokens :meth:`encode` cut from its last sample (0: it fit).
        self.last_truncated = 0

    def plan(self, messages: list[dict[str, str]], sample: dict[str, Any], where: str) -> list[list[Any]]:
        """The image slots of a conversation in text order: ``["image", k, [0]]`` for ``images[k]``,
        ``["frames", k, [frame indices]]`` for (frames of) ``videos[k]``; placeholder counts checked
        against ``images`` / ``videos``, video files probed (not decoded)."""
        images, videos = sample.get("images") or [], sample.get("videos") or []
        found = [m.group(0) for msg in messages for m in self._placeholders.finditer(msg["content"])]
        for token, refs, key in ((self.image_token, images, "images"), (VIDEO_TOKEN, videos, "videos")):
            n = found.count(token)
            if n != len(refs):
                raise DataError(
                    f"{where}: {n} '{token}' placeholder(s) in the text but {len(refs)} {key[:-1]}(s); "
                    f"put one '{token}' in a message for each {key[:-1]}",
                    reason=f"{key[:-1]}-count",
                    where=where,
                )
        slots: list[list[Any]] = []
        counters = {self.image_token: 0, VIDEO_TOKEN: 0}
        for token in found:
            k = counters[token]
            counters[token] += 1
            if token == self.image_token:
                slots.append([IMAGE_SLOT, k, [0]])
                continue
            indices = probe(videos[k], self.video, where)
            slots += [[VIDEO_SLOT, k, indices]] if self.video_per_slot else [[VIDEO_SLOT, k, [i]] for i in indices]
        return slots

    def rewrite(self, messages: list[dict[str, str]], slots: list[list[Any]]) -> list[dict[str, str]]:
        """``messages`` with each ``<video>`` replaced by the image tokens of its slots."""
        if not any(kind == VIDEO_SLOT for kind, _, _ in slots):
            return messages
        per_video: dict[int, int] = {}
        for kind, k, _ in slots:
            if kind == VIDEO_SLOT:
                per_video[k] = per_video.get(k, 0) + 1
        seen = iter(range(len(per_video)))

        def swap(match: re.Match) -> str:
            return self.image_token * per_video[next(seen)]

        video = re.compile(re.escape(VIDEO_TOKEN))
        return [{**m, "content": video.sub(swap, m["content"])} for m in messages]

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
                raise DataError(
                    f"{where}: the chat template renders turns differently in prefixes, so assistant "
                    f"turns cannot be located; set chat_template: in the recipe",
                    reason="chat-template",
                    where=where,
                )
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
        labels = [
            t if any(s <= start < e for s, e in spans) else IGNORE_INDEX
            for t, (start, _) in zip(ids, enc["offset_mapping"])
        ]
        if len(self._cache) < self.cache_limit:
            self._cache[key] = (ids, labels)
        return ids, labels

    def _expand(self, ids: list[int], labels: list[int] | None, n_images: int, where: str):
        n_slots = sum(1 for t in ids if t == self.image_token_id)
        if n_slots != n_images:
            raise DataError(
                f"{where}: {n_slots} '{self.image_token}' placeholder(s) in the text but {n_images} "
                f"image(s); put one '{self.image_token}' in a message for each image",
                reason="image-count",
                where=where,
            )
        out_ids: list[int] = []
        out_labels: list[int] = []
        for j, t in enumerate(ids):
            if t == self.image_token_id:
                out_ids += [t] * self.tokens_per_image
                out_labels += [IGNORE_INDEX] * self.tokens_per_image
            else:
                out_ids.append(t)
                out_labels.append(labels[j] if labels is not None else IGNORE_INDEX)
        return out_ids, out_labels

    def _too_long(self, n: int, n_images: int, where: str, fix: str) -> DataError:
        return DataError(
            f"{where}: {n} tokens ({n_images} image(s) x {self.tokens_per_image}) exceed max_seq_length "
            f"{self.max_seq_length}; {fix}",
            reason="too-long",
            where=where,
        )

    def truncate(
        self, ids: list[int], labels: list[int], slots: list[list[Any]]
    ) -> tuple[list[int], list[int], list[list[Any]]]:
        """The first ``max_seq_length`` tokens, cut before an image whose tokens would be split; the
        slots of images after the cut are dropped with them."""
        cut = self.max_seq_length
        starts = [j for j, t in enumerate(ids) if t == self.image_token_id][:: self.tokens_per_image]
        kept = [b for b in starts if b < cut]
        if kept and kept[-1] + self.tokens_per_image > cut:  # the cut falls inside the last image's tokens
            cut = kept.pop()
        return ids[:cut], labels[:cut], slots[: len(kept)]

    def encode(self, sample: dict[str, Any], where: str) -> tuple[list[int], list[int], list[list[Any]]]:
        """``(input ids, labels, image slots)`` of a training sample (slots: see :meth:`plan`). An
        over-long one is cut (``on_overlength: truncate-text``; :attr:`last_truncated` says by how
        many tokens) or raises a ``too-long`` DataError (``skip`` / ``error``)."""
        slots = self.plan(sample["messages"], sample, where)
        ids, labels = self._tokenize(self.rewrite(sample["messages"], slots), where)
        out_ids, out_labels = self._expand(ids, labels, len(slots), where)
        self.last_truncated = 0
        if len(out_ids) > self.max_seq_length:
            if self.on_overlength != "truncate-text":
                fix = "raise max_seq_length, or set on_overlength: truncate-text (or skip)"
                raise self._too_long(len(out_ids), len(slots), where, fix)
            full = len(out_ids)
            out_ids, out_labels, slots = self.truncate(out_ids, out_labels, slots)
            self.last_truncated = full - len(out_ids)
        if all(lb == IGNORE_INDEX for lb in out_labels):
            why = " after cutting it to max_seq_length" if self.last_truncated else ""
            reason = "too-long" if self.last_truncated else "no-target"
            raise DataError(f"{where}: no assistant tokens to train on{why}", reason=reason, where=where)
        return out_ids, out_labels, slots

    def encode_prompt(
        self, messages: list[dict[str, str]], sample: dict[str, Any], where: str
    ) -> tuple[list[int], list[list[Any]]]:
        """``(prompt ids ending in the generation prompt, image slots)`` for ``messages`` whose
        images and videos are ``sample``'s."""
        slots = self.plan(messages, sample, where)
        text = self._render(self.rewrite(messages, slots), True)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        out = self._expand(list(ids), None, len(slots), where)[0]
        if len(out) > self.max_seq_length:
            raise self._too_long(len(out), len(slots), where, "raise max_seq_length or shorten the prompt")
        return out, slots

    def instructions(self, messages: list[dict[str, str]], slots: list[list[Any]] | None = None) -> list[list[int]]:
        """For each image slot, in order: the token ids of the message it appears in, without the
        placeholders (what a text-conditioned connector attends to), at most ``max_instruction_tokens``."""
        out = []
        for m in self.rewrite(messages, slots or []):
            count = m["content"].count(self.image_token)
            if count:
                text = " ".join(m["content"].replace(self.image_token, " ").split())
                ids = list(self.tok(text, add_special_tokens=False)["input_ids"])[: self.max_instruction_tokens]
                out += [ids or [self.tok.pad_token_id]] * count
        return out


class EncodedDataset(torch.utils.data.Dataset):
    """A training view of canonical samples: checked and tokenized up front, images read lazily.

    ``skipped`` holds the rows dropped up front (the format's own and the encoder's). A sample whose
    image fails to decode later is, under ``skip_bad``, replaced by the next good sample and reported
    in the item's ``SKIPPED_KEY``; otherwise its DataError stops the run.
    """

    def __init__(
        self,
        samples: Sequence[dict[str, Any]],
        encoder: SampleEncoder,
        name: str,
        skip_bad: bool,
        progress: Callable[[int], None] | None = None,
        items: list[tuple[int, list[int], list[int], list[list[Any]]]] | None = None,
        skipped: list[dict] | None = None,
        truncated: list[str] | None = None,
    ):
        self.samples = samples
        self.encoder = encoder
        self.name = name
        self.skip_bad = skip_bad
        self.skipped: list[dict] = [_as_skip(e) for e in getattr(samples, "skipped", [])]
        #: ``where`` of each sample cut to ``max_seq_length`` (``on_overlength: truncate-text``)
        self.truncated: list[str] = []
        if items is not None:  # already encoded (e.g. by the main process)
            self.items = items
            self.skipped = list(skipped or [])
            self.truncated = list(truncated or [])
        else:
            self.items = []
            self._encode(encoder, progress)
        if not self.items:
            raise DataError(f"{name}: no usable samples ({len(self.skipped)} skipped)", reason="empty")

    def _encode(self, encoder: SampleEncoder, progress: Callable[[int], None] | None) -> None:
        for i in range(len(self.samples)):
            sample = self.samples[i]
            where = _where(sample, i, self.name)
            try:
                for ref in sample.get("images") or []:
                    check_image(ref, where)
                ids, labels, slots = encoder.encode(sample, where)
            except DataError as e:
                if not self._skips(e):
                    raise
                self.skipped.append(_as_skip(e))
                continue
            if encoder.last_truncated:
                self.truncated.append(where)
            self.items.append((i, ids, labels, slots))
            if progress is not None:
                progress(1)

    def _skips(self, error: DataError) -> bool:
        """Whether a sample that failed to encode is skipped: over-long ones by ``on_overlength``
        (``skip``, or nothing left after ``truncate-text``), the rest by ``on_bad_sample``."""
        if error.reason == "too-long":
            return self.encoder.on_overlength != "error"
        return self.skip_bad

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[int]:
        """Each item's sequence length (text and image tokens), known from tokenising: length-grouped
        sampling reads these instead of loading every item, which would decode every image."""
        return [len(ids) for _, ids, _, _ in self.items]

    def _load(self, k: int) -> dict[str, Any]:
        i, ids, labels, slots = self.items[k]
        sample = self.samples[i]
        where = _where(sample, i, self.name)
        images, frames = load_media(sample, slots, where)
        item = {"input_ids": ids, "labels": labels, "images": images, "frames": frames}
        if self.encoder.with_instructions:  # slots cut by truncation lose their instructions too
            item["instruction_ids"] = self.encoder.instructions(sample["messages"], slots)[: len(slots)]
        return item

    def __getitem__(self, k: int) -> dict[str, Any]:
        skips: list[dict] = []
        for attempt in range(len(self.items)):
            try:
                item = self._load((k + attempt) % len(self.items))
            except DataError as e:
                if not self.skip_bad:
                    raise
                skips.append(_as_skip(e))
                continue
            item[SKIPPED_KEY] = skips
            return item
        raise DataError(
            f"{self.name}: no sample could be loaded ({len(skips)} failed); first: {skips[0]['message']}",
            reason="empty",
        )


def load_media(sample: dict[str, Any], slots: list[list[Any]], where: str) -> tuple[list[Image.Image], list[int]]:
    """The images of ``slots`` (see :meth:`SampleEncoder.plan`), flat and in order, and the number of
    frames in each slot (1 for an image); each video is read once."""
    videos = sample.get("videos") or []
    wanted: dict[int, list[int]] = {}
    for kind, k, indices in slots:
        if kind == VIDEO_SLOT:
            wanted.setdefault(k, []).extend(indices)
    decoded: dict[int, dict[int, Image.Image]] = {}
    for k, indices in wanted.items():
        unique = sorted(set(indices))
        decoded[k] = dict(zip(unique, read_frames(videos[k], unique, where)))
    images: list[Image.Image] = []
    frames: list[int] = []
    refs = sample.get("images") or []
    for kind, k, indices in slots:
        images += [load_image(refs[k], where)] if kind == IMAGE_SLOT else [decoded[k][i] for i in indices]
        frames.append(len(indices))
    return images, frames


def _as_skip(error: Any) -> dict:
    if isinstance(error, dict):
        return error
    return {
        "reason": getattr(error, "reason", "bad-sample"),
        "where": getattr(error, "where", None),
        "message": str(error),
    }


def pad_instructions(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-image instruction ids: ``([N_img, L] long, [N_img, L] long mask)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


class TrainCollator:
    """Right-pads ``input_ids``/``labels`` and preprocesses all images of the batch in order;
    ``image_frames`` (``long [N_slots]``, frames per image slot) when a slot holds a video's frames."""

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
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if images:
            out["pixel_values"] = self.preprocess(images)
            frames = [f for b in batch for f in b.get("frames") or [1] * len(b["images"])]
            if any(f != 1 for f in frames):
                out["image_frames"] = torch.tensor(frames, dtype=torch.long)
            instructions = [ins for b in batch for ins in b.get("instruction_ids", ())]
            if instructions:
                out["instruction_ids"], out["instruction_mask"] = pad_instructions(instructions, self.pad)
        skipped = [s for b in batch for s in b.get(SKIPPED_KEY, ())]
        if skipped:
            out[SKIPPED_KEY] = skipped
        return out
