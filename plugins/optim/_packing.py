"""The packing collator: first-fit rows of whole samples, restarting position ids, no attention mask
(transformers derives the block-diagonal mask from the position ids; see ``packing.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vlmplug.contracts import OptimizerStackComponent
from vlmplug.train.data import STATS_KEY


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into rows of total length <= ``capacity``, each item in the first row with room
    (in the given order; an item longer than ``capacity`` gets a row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    return rows


def merge(items: list[dict[str, Any]]) -> dict[str, Any]:
    """One row's items as one item: every list concatenated in order (text, labels, images, frames
    per image slot, instructions, skip records)."""
    out: dict[str, Any] = {}
    for it in items:
        it = {**it, "frames": it.get("frames") or [1] * len(it.get("images", []))}
        for key, value in it.items():
            out[key] = out.get(key, []) + list(value)
    return out


def position_ids(segments: list[list[int]], width: int) -> torch.Tensor:
    """``[rows, width]``: 0, 1, ... within each segment; the padding after them is one more segment."""
    out = torch.zeros((len(segments), width), dtype=torch.long)
    for r, lengths in enumerate(segments):
        pieces = [torch.arange(n) for n in lengths]
        used = sum(lengths)
        pieces.append(torch.arange(width - used))
        out[r] = torch.cat(pieces)
    return out


class PackedCollator:
    """Packs a batch's items into rows, then lets the run's collator pad and preprocess them; the
    batch carries its packing counts (``STATS_KEY``) for :meth:`summarize`."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, Any]], capacity: int):
        self.collate = collate
        self.capacity = capacity

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [len(it["input_ids"]) for it in batch]
        groups = first_fit(lengths, self.capacity)
        out = self.collate([merge([batch[i] for i in group]) for group in groups])
        width = out["input_ids"].shape[1]
        out["position_ids"] = position_ids([[lengths[i] for i in group] for group in groups], width)
        out.pop("attention_mask", None)  # the restarting position ids isolate the samples
        out["use_cache"] = False  # transformers reads packed position ids only without a cache
        out[STATS_KEY] = {
            "real_tokens": sum(lengths),
            "row_slots": len(groups) * width,
            "rows": len(groups),
            "samples": len(batch),
        }
        return out

    @staticmethod
    def summarize(totals: dict[str, float]) -> dict[str, Any]:
        """Packing efficiency (real tokens / row slots) and samples per row, from the summed counts."""
        return {
            "packing_efficiency": round(totals.get("real_tokens", 0) / max(totals.get("row_slots", 0), 1), 4),
            "samples_per_row": round(totals.get("samples", 0) / max(totals.get("rows", 0), 1), 3),
            "rows": int(totals.get("rows", 0)),
        }


class Packing(OptimizerStackComponent):
    def __init__(self, capacity: int):
        self.capacity = capacity

    def wrap_collator(self, collator: Any) -> PackedCollator:
        return PackedCollator(collator, self.capacity)


def build(config: Any, ctx: Any) -> Packing:
    recipe = getattr(ctx, "recipe", None)
    capacity = int(recipe.core["max_seq_length"]) if recipe is not None else 1024
    return Packing(capacity)
