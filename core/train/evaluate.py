"""Held-out evaluation: generate answers with the model, score them with the evaluators.

Besides the evaluators' metrics this can report two checks that tell whether a VLM *looks*:
``blank_image_accuracy`` (the same questions with every image replaced by a blank canvas) and the
answer-prior baseline (always give the most common training answer for the question type).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from .data import SampleEncoder, load_image, spread_indices

__all__ = ["generate_records", "score_records", "prior_answers", "summarize"]


def _last_user(messages: list[dict[str, str]]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


@torch.no_grad()
def generate_records(vlm: Any, samples: Sequence[dict[str, Any]], *, evaluator: Any, encoder: SampleEncoder,
                     tokenizer: Any, preprocess: Callable[[list[Image.Image]], torch.Tensor], batch_size: int,
                     max_new_tokens: int, blank_images: bool = False, limit: int | None = None,
                     progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Greedy-decode an answer for each sample; return records with ``prediction`` and references."""
    was_training = vlm.training
    vlm.eval()
    n = len(samples) if limit is None else min(limit, len(samples))
    pad = tokenizer.pad_token_id
    records: list[dict[str, Any]] = []
    device = vlm.device
    try:
        for lo in range(0, n, batch_size):
            batch = [samples[i] for i in range(lo, min(n, lo + batch_size))]
            prompts, images = [], []
            for k, s in enumerate(batch):
                where = str(s.get("_where") or f"eval sample {lo + k}")
                msgs = evaluator.prompt(s)
                refs = s.get("images") or []
                prompts.append(encoder.encode_prompt(msgs, len(refs), where))
                for ref in refs:
                    img = load_image(ref, where)
                    images.append(Image.new("RGB", img.size, (255, 255, 255)) if blank_images else img)
            width = max(len(p) for p in prompts)
            ids = torch.full((len(prompts), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, p in enumerate(prompts):  # left padding, so every prompt ends where generation starts
                ids[r, width - len(p):] = torch.tensor(p)
                mask[r, width - len(p):] = 1
            pixel_values = preprocess(images).to(device) if images else None
            out = vlm.generate(ids.to(device), mask.to(device), pixel_values, max_new_tokens=max_new_tokens,
                               do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(out, skip_special_tokens=True)
            for s, text in zip(batch, texts):
                rec = {"id": s.get("id"), "question": _last_user(s["messages"]),
                       "prediction": evaluator.parse(text), evaluator.reference_key: evaluator.references(s)}
                if "question_type" in s:
                    rec["question_type"] = s["question_type"]
                records.append(rec)
            if progress is not None:
                progress(len(batch))
    finally:
        vlm.train(was_training)
    return records


def score_records(evaluator: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    metrics, _ = evaluator.score(records)
    return summarize(metrics)


def summarize(metrics: dict[str, float]) -> dict[str, Any]:
    """Group ``accuracy_<type>`` keys under ``per_type``."""
    out: dict[str, Any] = {}
    per_type = {}
    for k, v in metrics.items():
        if k.startswith("accuracy_"):
            per_type[k[len("accuracy_"):]] = v
        else:
            out[k] = v
    if per_type:
        out["per_type"] = per_type
    return out


def prior_answers(train: Sequence[dict[str, Any]], evaluator: Any, max_samples: int = 5000) -> dict[str | None, str]:
    """Most common reference answer per question type in (a strided subset of) the training data."""
    counts: dict[str | None, Counter] = {}
    for i in spread_indices(len(train), max_samples):
        s = train[i]
        refs = evaluator.references(s)
        if not refs:
            continue
        ref = refs[0]["answer"] if isinstance(refs[0], dict) else refs[0]
        counts.setdefault(s.get("question_type"), Counter())[str(ref)] += 1
    return {k: c.most_common(1)[0][0] for k, c in counts.items()}
