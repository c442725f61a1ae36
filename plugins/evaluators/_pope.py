"""The ``pope`` evaluator: POPE yes/no probes scored as the official evaluate script does.

Reference
---------
Y. Li, Y. Du, K. Zhou, J. Wang, W. X. Zhao and J.-R. Wen, "Evaluating Object Hallucination in Large
Vision-Language Models", EMNLP 2023; and the official ``evaluate.py`` of the POPE repository
(AoiDragon/POPE, also copied into LLaVA's ``eval_pope.py``). This module is an independent,
standard-library-only re-implementation of that script's rules.

Method
------
Every record is a question "Is there a <object> in the image?" with a ``label`` "yes" or "no". The
generated answer is reduced to "yes" / "no" (below), "yes" is the positive class, and the script
reports accuracy ``(TP + TN) / N``, precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``, F1
``2PR / (P + R)`` and the yes-ratio (the share of "yes" answers among all answers). POPE builds its
negatives three ways (``random``, ``popular``, ``adversarial``); records that carry ``sampling``
(as ``vlmplug data negatives --mode pope`` writes them) are also scored per sampling.

Quirks of the official answer parsing reproduced here
-----------------------------------------------------
* **First sentence only**: when the answer contains a ``.``, everything from the first ``.`` on is
  dropped (``"Yes. There is no dog."`` -> ``"Yes"`` -> yes; ``".No"`` -> ``""`` -> yes).
* **Commas are deleted** (not turned into spaces): ``"No, there is none"`` -> ``"No there is none"``;
  ``"yes,no"`` -> ``"yesno"`` (no "no" word left) -> yes.
* **Words are split on the space character only**, not on other whitespace: ``"No\\nthere is"`` has
  the word ``"No\\nthere"``, so it reads as yes.
* **"no" if the words include exactly** ``No``, ``not`` or ``no`` (case-sensitive, whole words), else
  **"yes"**: ``"NO"``, ``"Not"``, ``"No!"``, ``"cannot"``, ``"isn't"``, an empty answer or anything
  unrelated all count as "yes"; ``"I do not see a dog"`` counts as "no".

Deliberate differences
----------------------
* **Labels** must be "yes" or "no" (case-insensitive, surrounding whitespace ignored); anything else
  raises ``ValueError`` naming the record. The official script maps exactly ``"no"`` to negative and
  every other label (``"No"``, typos) to positive.
* **Zero denominators** (no "yes" answers for precision, no "yes" labels for recall, P + R = 0 for
  F1) give 0.0 for that metric and a ``RuntimeWarning`` (:func:`warnings.warn`) naming the metric
  and the sampling; the official script raises ``ZeroDivisionError``.
* Predictions and labels are paired per record; the official script pairs two files by position
  (``zip``, silently dropping the tail of the longer one).
* ``parse`` only strips surrounding whitespace (as LLaVA's answer-generation scripts do before
  writing the answers file); the official yes/no reduction happens in ``score``, so ``vlmplug score``
  works on raw generations and per-record files keep the model's text.
* Metrics are fractions in [0, 1]; the confusion counts ``tp``, ``fp``, ``tn``, ``fn`` and ``count``
  are integers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from vlmplug.contracts import EvaluatorBase
from vlmplug.errors import DataError

from ._common import conversation

__all__ = ["PopeEvaluator", "build", "confusion_metrics", "pope_answer", "score_records"]

#: The words that make an answer "no" (compared exactly, case-sensitive).
NEGATIVE_WORDS = frozenset({"No", "not", "no"})

LABELS = ("yes", "no")


def pope_answer(text: str) -> str:
    """``"yes"`` or ``"no"``: the official reading of a generated answer (see the module docstring)."""
    first_sentence = text.partition(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if NEGATIVE_WORDS.intersection(words) else "yes"


def _ratio(numerator: int, denominator: int, metric: str, why: str, where: str) -> float:
    if denominator:
        return numerator / denominator
    warnings.warn(f"pope: {metric} is undefined ({why}){where}; reported as 0.0", RuntimeWarning, stacklevel=4)
    return 0.0


def confusion_metrics(predictions: Sequence[str], labels: Sequence[str], where: str = "") -> dict[str, Any]:
    """Accuracy, precision, recall, F1, yes-ratio and the confusion counts of paired "yes"/"no"
    ``predictions`` and ``labels`` ("yes" is positive). ``where`` (e.g. ``" for sampling 'random'"``)
    ends the warning for an undefined metric."""
    pairs = list(zip(predictions, labels))
    if not pairs:
        raise ValueError("no records to score")
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g == "no" for p, g in pairs)
    tn = sum(p == "no" and g == "no" for p, g in pairs)
    fn = sum(p == "no" and g == "yes" for p, g in pairs)
    precision = _ratio(tp, tp + fp, "precision", "no 'yes' predictions", where)
    recall = _ratio(tp, tp + fn, "recall", "no 'yes' labels", where)
    if precision + recall:
        f1 = 2 * precision * recall / (precision + recall)
    else:
        f1 = _ratio(0, 0, "f1", "precision + recall = 0", where)
    return {
        "accuracy": (tp + tn) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / len(pairs),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "count": len(pairs),
    }


def _label(raw: Any, row: int) -> str:
    if isinstance(raw, str) and raw.strip().lower() in LABELS:
        return raw.strip().lower()
    raise ValueError(f"record {row}: 'label' must be 'yes' or 'no', got {raw!r}")


def score_records(records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[float]]:
    """``(metrics, per-record correctness)`` of records ``{"prediction": str, "label": "yes"|"no",
    "sampling"?: str}``. ``metrics`` holds :func:`confusion_metrics` of all records and, when any
    record has a ``sampling``, ``per_sampling: {sampling: metrics}``."""
    predictions: list[str] = []
    labels: list[str] = []
    by_sampling: dict[str, list[int]] = {}
    for row, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(
                f"record {row}: expected a mapping with 'prediction' and 'label', got {type(record).__name__}"
            )
        for key in ("prediction", "label"):
            if key not in record:
                raise ValueError(f"record {row}: missing {key!r} (each record needs 'prediction' and 'label')")
        prediction = record["prediction"]
        if not isinstance(prediction, str):
            raise ValueError(f"record {row}: 'prediction' must be a string, got {type(prediction).__name__}")
        labels.append(_label(record["label"], row))
        predictions.append(pope_answer(prediction))
        sampling = record.get("sampling")
        if sampling is not None:
            if not isinstance(sampling, str) or not sampling:
                raise ValueError(f"record {row}: 'sampling' must be a non-empty string, got {sampling!r}")
            by_sampling.setdefault(sampling, []).append(row)
    metrics = confusion_metrics(predictions, labels)
    if by_sampling:
        metrics["per_sampling"] = {
            name: confusion_metrics(
                [predictions[i] for i in rows], [labels[i] for i in rows], f" for sampling {name!r}"
            )
            for name, rows in sorted(by_sampling.items())
        }
    return metrics, [1.0 if p == g else 0.0 for p, g in zip(predictions, labels)]


class PopeEvaluator(EvaluatorBase):
    primary_metric = "accuracy"

    def __init__(self, config: Any):
        self.suffix = config.prompt_suffix

    def prompt(self, sample: Mapping[str, Any]) -> list[dict[str, str]]:
        """The conversation up to the last assistant turn, ``prompt_suffix`` appended to the last turn."""
        return conversation(sample, self.suffix)

    def references(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """``label`` ("yes"/"no": the sample's, else the last assistant turn) and ``sampling`` when present."""
        raw = sample.get("label")
        if raw is None:
            turns = [m["content"] for m in sample.get("messages", ()) if m["role"] == "assistant"]
            raw = turns[-1] if turns else None
        if not isinstance(raw, str) or raw.strip().lower() not in LABELS:
            raise DataError(
                f"pope sample needs 'label' 'yes' or 'no' (or a final assistant turn 'yes'/'no'), got {raw!r}",
                reason="no-target",
                where=sample.get("_where"),
            )
        out: dict[str, Any] = {"label": raw.strip().lower()}
        if sample.get("sampling") is not None:
            out["sampling"] = sample["sampling"]
        return out

    def parse(self, text: str) -> str:
        """The generated text, stripped; the official yes/no reading happens in :meth:`score`."""
        return text.strip()

    def score(self, records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[float]]:
        return score_records(records)

    def baselines(
        self, train: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """``always_yes``: answer "yes" to every probe (accuracy 0.5 and yes-ratio 1 on POPE's
        balanced sets; a model that hallucinates objects drifts towards it)."""
        if not records:
            return {}
        return {"always_yes": self.score([{**r, "prediction": "Yes"} for r in records])[0]}


def build(config: Any, ctx: Any) -> PopeEvaluator:
    return PopeEvaluator(config)
