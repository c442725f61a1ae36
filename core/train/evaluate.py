"""Held-out evaluation: generate answers on every eval set, score them with every evaluator.

The core knows no metric: each evaluator returns a dict and declares its ``primary_metric``
(the headline and the curve); evaluator-specific reference points (e.g. an answer-prior baseline)
come from the evaluator's ``baselines``, and data-specific checks (e.g. blank images) are eval sets
of their own. A bad eval row follows ``on_bad_sample`` like a training row: an error naming the
row, or a counted skip.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmplug.errors import DataError, SkipReport

from .data import SampleEncoder
from .predict import Predictor, Sampling

__all__ = ["EvalSet", "Evaluation", "generate_records", "flatten_metrics"]


@dataclass
class EvalSet:
    """A labelled held-out dataset (``label`` is unique within the run)."""

    label: str
    samples: Sequence[dict[str, Any]]


def _last_user(messages: list[dict[str, str]]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


def _variants(samples: Sequence[dict[str, Any]], n: int, evaluator: Any) -> list[tuple[int, dict[str, Any], bool]]:
    """``(sample index, sample to generate, whether it is the sample's last variant)`` for the first ``n``
    samples: each sample once, or the evaluator's ``variants`` of it (e.g. rotated options)."""
    expand = getattr(evaluator, "variants", None)
    out: list[tuple[int, dict[str, Any], bool]] = []
    for i in range(n):
        found = list(expand(samples[i])) if expand is not None else [samples[i]]
        out += [
            (i, {**v, "_where": v.get("_where") or f"eval sample {i}"}, k == len(found) - 1)
            for k, v in enumerate(found)
        ]
    return out


def generate_records(
    vlm: Any,
    samples: Sequence[dict[str, Any]],
    *,
    evaluator: Any,
    encoder: SampleEncoder,
    tokenizer: Any,
    preprocess: Callable[[list[Image.Image]], torch.Tensor],
    batch_size: int,
    max_new_tokens: int,
    limit: int | None = None,
    skips: SkipReport | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Greedy-decode an answer for each sample (each of the evaluator's ``variants`` of it); return
    ``{id, question, prediction, **references}`` records. ``progress(k)``: k more samples done.

    A bad sample raises its DataError, or is counted in ``skips`` when that is given."""
    predictor = Predictor(vlm, encoder, "eval", tokenizer=tokenizer, preprocess=preprocess)
    sampling = Sampling(max_new_tokens=max_new_tokens)
    was_training = vlm.training
    vlm.eval()
    n = len(samples) if limit is None else min(limit, len(samples))
    todo = _variants(samples, n, evaluator)
    records: list[dict[str, Any]] = []
    try:
        for lo in range(0, len(todo), batch_size):
            chunk = todo[lo : lo + batch_size]
            batch, prepared = [], []
            for _, sample, _ in chunk:
                try:
                    prepared.append(predictor.prepare(sample, evaluator.prompt(sample)))
                except DataError as e:
                    if skips is None:
                        raise
                    skips.add(e)
                    continue
                batch.append(sample)
            if batch:
                for s, done in zip(batch, predictor.complete(prepared, sampling)):
                    records.append(
                        {
                            "id": s.get("id"),
                            "question": _last_user(s["messages"]),
                            "prediction": evaluator.parse(done.text),
                            **evaluator.references(s),
                        }
                    )
            if progress is not None:
                progress(sum(last for _, _, last in chunk))
    finally:
        vlm.train(was_training)
    return records


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for tables)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_metrics(v, f"{key}."))
        else:
            out[key] = v
    return out


class Evaluation:
    """Every eval set x every evaluator, with progress bars, predictions files and skip counting."""

    def __init__(
        self,
        *,
        vlm: Any,
        sets: list[EvalSet],
        evaluators: list[tuple[str, Any]],
        encoder: SampleEncoder,
        tokenizer: Any,
        preprocess: Callable[[list[Image.Image]], torch.Tensor],
        core: dict[str, Any],
        skip_bad: bool,
        console: Any,
        run_dir: Path,
        notify: Callable[..., None],
    ):
        self.vlm, self.sets, self.evaluators = vlm, sets, evaluators
        self.gen = dict(
            encoder=encoder,
            tokenizer=tokenizer,
            preprocess=preprocess,
            batch_size=core["eval_batch_size"],
            max_new_tokens=core["eval_max_new_tokens"],
        )
        self.max_samples: int | None = core.get("eval_max_samples")
        self.curve_samples = min(core["eval_curve_samples"], self.max_samples or core["eval_curve_samples"])
        self.skips = SkipReport()
        self.skip_bad = skip_bad
        self.console, self.run_dir, self.notify = console, run_dir, notify

    @property
    def enabled(self) -> bool:
        return bool(self.sets and self.evaluators)

    def _records(
        self, s: EvalSet, evaluator: Any, limit: int | None, progress: Callable[[int], None], skips: SkipReport | None
    ) -> list[dict[str, Any]]:
        return generate_records(
            self.vlm, s.samples, evaluator=evaluator, limit=limit, progress=progress, skips=skips, **self.gen
        )

    def run(self, label: str) -> dict[str, dict[str, Any]]:
        """Evaluate every set with every evaluator; write ``predictions_<label>.jsonl``."""
        from rich.progress import Progress

        results: dict[str, dict[str, Any]] = {}
        rows: list[dict[str, Any]] = []
        total = sum(min(len(s.samples), self.max_samples or len(s.samples)) for s in self.sets) * len(self.evaluators)
        skips = self.skips if self.skip_bad else None
        with Progress(console=self.console, transient=True) as progress:
            task = progress.add_task(f"eval {label}", total=total)
            for s in self.sets:
                for name, ev in self.evaluators:
                    records = self._records(s, ev, self.max_samples, lambda k: progress.advance(task, k), skips)
                    results.setdefault(s.label, {})[name] = self._score(ev, records, f"{s.label} ({name})")
                    rows += [{"eval_set": s.label, "evaluator": name, **r} for r in records]
        with (self.run_dir / f"predictions_{label}.jsonl").open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=str) + "\n")
        self.notify("on_eval_end", results={"label": label, **results})
        return results

    @staticmethod
    def _score(evaluator: Any, records: list[dict[str, Any]], what: str) -> dict[str, Any]:
        if not records:
            raise DataError(f"eval set {what}: no sample could be evaluated (all skipped)", reason="empty")
        return evaluator.score(records)[0]

    def curve_point(self) -> tuple[int, dict[str, Any], str]:
        """The first eval set on ``eval_curve_samples`` samples: (samples, {evaluator: metrics}, summary)."""
        s = self.sets[0]
        metrics = {}
        for name, ev in self.evaluators:
            records = self._records(s, ev, self.curve_samples, lambda k: None, SkipReport() if self.skip_bad else None)
            metrics[name] = self._score(ev, records, f"{s.label} ({name})")
        return min(self.curve_samples, len(s.samples)), metrics, self.summary(metrics)

    def summary(self, per_evaluator: dict[str, Any]) -> str:
        parts = []
        for name, ev in self.evaluators:
            value = per_evaluator.get(name, {}).get(ev.primary_metric)
            parts.append(
                f"{name} {ev.primary_metric} {value:.3f}"
                if isinstance(value, float)
                else f"{name} {ev.primary_metric} {value}"
            )
        return ", ".join(parts)

    def baselines(self, train: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Each evaluator's model-free reference points on each eval set."""
        out: dict[str, dict[str, Any]] = {}
        for s in self.sets:
            n = min(len(s.samples), self.max_samples or len(s.samples))
            for name, ev in self.evaluators:
                refs = [{"prediction": "", **ev.references(s.samples[i])} for i in range(n)]
                found = ev.baselines(train, refs)
                if found:
                    out.setdefault(s.label, {})[name] = found
        return out

    def primary(self, results: dict[str, dict[str, Any]]) -> tuple[str, Any]:
        """``("<set>/<evaluator>/<metric>", value)`` of the first set and evaluator."""
        s, (name, ev) = self.sets[0], self.evaluators[0]
        return f"{s.label}/{name}/{ev.primary_metric}", results.get(s.label, {}).get(name, {}).get(ev.primary_metric)
