"""GQA accuracy, computed as the official GQA evaluation script does, and the ``gqa`` evaluator.

Reference
---------
D. A. Hudson and C. D. Manning, "GQA: A New Dataset for Real-World Visual Reasoning and
Compositional Question Answering", CVPR 2019; the official evaluation script ``eval.py`` of the
GQA release (gqadataset.org, version 1.2).  LLaVA scores GQA with that script after converting
its generations with ``scripts/convert_gqa_for_eval.py``.  This module is an independent,
standard-library-only re-implementation of the accuracy part of that path.

Method
------
* **Parsing** (:meth:`GqaEvaluator.parse`) does what LLaVA does between generation and
  ``eval.py``: the generated text is stripped (here: its first line), then trailing periods are
  removed (``rstrip(".")``) and the text is lower-cased.
* **Scoring** (:func:`gqa_accuracy`) is ``eval.py``'s: a question scores 1.0 when the prediction
  string equals the gold ``answer`` string exactly, else 0.0; the accuracy is the mean.
* **Breakdowns**, as ``eval.py`` reports them, where records carry GQA's ``types``:
  ``per_structural`` (verify / query / choose / logical / compare), ``per_semantic`` (attr / cat /
  global / obj / rel), and ``binary`` / ``open``: a question is *open* when its structural type is
  ``query`` and *binary* otherwise.  ``per_detailed`` (GQA's fine-grained type) is a vlmplug extra.

Quirks of the official path reproduced here
-------------------------------------------
* **Exact, raw string comparison** in scoring: no lower-casing, stripping or article handling.
  A record ``{"prediction": "Yes", "answer": "yes"}`` scores 0.0, and so does ``"the man"``
  against ``"man"``.  (Predictions from vlmplug's own generation are already lower-cased by
  :meth:`GqaEvaluator.parse`; predictions scored from a file are compared as they are.)
* **Parsing removes every trailing period, not only one, and nothing else**: ``"Yes."`` ->
  ``"yes"``, ``"etc.."`` -> ``"etc"``, but ``"yes ."`` -> ``"yes "`` (the space stays and no longer
  matches), and ``"a dog"`` stays ``"a dog"``.
* **Binary is "not query"**: every structural type other than ``query`` (``verify``, ``logical``,
  ``choose``, ``compare``) counts as binary, including ``choose`` questions whose answer is one of
  two named options rather than yes/no.

Deliberate differences
----------------------
* ``lenient=True`` (opt-in, not official) compares :func:`._vqa_metric.normalize_answer` of both
  sides (whitespace, punctuation, trailing periods, lower case, number words, articles,
  contractions): ``"The man."`` matches ``"man"``.
* ``eval.py`` scores only questions flagged ``isBalanced`` and demands a prediction for each; here
  every record given is scored (score the balanced split, e.g. ``testdev_balanced``, as LLaVA does).
* Validity, plausibility, consistency, grounding, distribution and the accuracy per question
  length / reasoning steps need GQA's choices, scene graphs or programs and are not computed.
* Scores are fractions in [0, 1], not percentages; group names are kept as they are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ._vqa import VqaEvaluator
from ._vqa_metric import normalize_answer

__all__ = ["gqa_accuracy", "llava_postprocess", "score_records", "GqaEvaluator", "build"]

#: GQA's structural types; only ``query`` questions are "open".
STRUCTURAL_TYPES = frozenset({"verify", "query", "choose", "logical", "compare"})
TYPE_KEYS = ("structural", "semantic", "detailed")
PRIOR_SAMPLES = 5000


def llava_postprocess(text: str) -> str:
    """LLaVA's ``convert_gqa_for_eval``: trailing periods removed, then lower-cased."""
    return text.rstrip(".").lower()


def gqa_accuracy(prediction: str, answer: str, lenient: bool = False) -> float:
    """1.0 when ``prediction == answer`` (``eval.py``), else 0.0; ``lenient`` compares
    :func:`normalize_answer` of both sides instead."""
    if lenient:
        return 1.0 if normalize_answer(prediction) == normalize_answer(answer) else 0.0
    return 1.0 if prediction == answer else 0.0


def _reference(record: Mapping[str, Any], where: str) -> str:
    """The gold answer: ``answer``, else the first of ``answers`` (a string or ``{"answer": ...}``)."""
    if "answer" in record:
        answer = record["answer"]
        if not isinstance(answer, str):
            raise ValueError(f"{where}: 'answer' must be a string, got {type(answer).__name__}")
        return answer
    if "answers" not in record:
        raise ValueError(f"{where}: missing 'answer' (each line needs 'prediction' and 'answer' or 'answers')")
    answers = record["answers"]
    if isinstance(answers, str):
        return answers
    if not isinstance(answers, (list, tuple)) or not answers:
        raise ValueError(f"{where}: 'answers' must be a non-empty list, got {answers!r:.60}")
    first = answers[0]
    if isinstance(first, Mapping):
        first = first.get("answer")
    if not isinstance(first, str):
        raise ValueError(f"{where}: 'answers'[0] must be a string or {{'answer': str}}, got {answers[0]!r:.60}")
    return first


def _types(record: Mapping[str, Any], where: str) -> dict[str, str]:
    types = record.get("types")
    if types is None:
        return {}
    if not isinstance(types, Mapping):
        raise ValueError(f"{where}: 'types' must be an object like {{'structural': ..., 'semantic': ...}}")
    out = {}
    for key in TYPE_KEYS:
        value = types.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{where}: 'types'.{key} must be a string, got {type(value).__name__}")
        out[key] = value
    return out


def _means(groups: dict[str, list[float]]) -> dict[str, float]:
    return {key: sum(groups[key]) / len(groups[key]) for key in sorted(groups)}


def score_records(records: Sequence[Mapping[str, Any]], lenient: bool = False) -> tuple[dict[str, Any], list[float]]:
    """Score ``{"prediction", "answer" | "answers", "types"?}`` records.

    Returns ``(metrics, per_record_scores)``: ``accuracy`` and ``count``; ``binary`` and ``open``
    over the records with a structural type; ``per_structural``, ``per_semantic`` and
    ``per_detailed`` over the records carrying that type.  Raises ``ValueError("record N: ...")``
    for a malformed record and when there are none.
    """
    scores: list[float] = []
    groups: dict[str, dict[str, list[float]]] = {key: {} for key in TYPE_KEYS}
    kinds: dict[str, list[float]] = {"binary": [], "open": []}
    for n, record in enumerate(records):
        where = f"record {n}"
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}: expected an object with 'prediction' and 'answer', got {type(record).__name__}")
        if "prediction" not in record:
            raise ValueError(f"{where}: missing 'prediction' (each line needs 'prediction' and 'answer' or 'answers')")
        prediction = record["prediction"]
        if not isinstance(prediction, str):
            raise ValueError(f"{where}: 'prediction' must be a string, got {type(prediction).__name__}")
        score = gqa_accuracy(prediction, _reference(record, where), lenient)
        scores.append(score)
        types = _types(record, where)
        for key, value in types.items():
            groups[key].setdefault(value, []).append(score)
        if "structural" in types:
            kinds["open" if types["structural"] == "query" else "binary"].append(score)
    if not scores:
        raise ValueError("no records to score")
    metrics: dict[str, Any] = {"accuracy": sum(scores) / len(scores), "count": len(scores)}
    for kind, values in kinds.items():
        if values:
            metrics[kind] = sum(values) / len(values)
    for key in TYPE_KEYS:
        if groups[key]:
            metrics[f"per_{key}"] = _means(groups[key])
    return metrics, scores


class GqaEvaluator(VqaEvaluator):
    """Prompting as ``vqa``; the GQA answer, types, parsing and scoring of the module docstring."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.lenient = bool(config.lenient)

    def references(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """``answer`` (the sample's ``answer``, else the first of ``answers``, else the last
        assistant turn) and ``types`` when known: the sample's GQA ``types`` object, else (samples
        of the ``vqa-data`` format) ``detailed`` from ``question_type`` and ``structural`` from an
        ``answer_type`` that is one of GQA's structural types."""
        answer = sample.get("answer")
        if not isinstance(answer, str):
            answers = sample.get("answers")
            first = answers[0] if isinstance(answers, (list, tuple)) and answers else answers
            answer = first.get("answer") if isinstance(first, Mapping) else first
        if not isinstance(answer, str):
            answer = [m for m in sample["messages"] if m["role"] == "assistant"][-1]["content"]
        out: dict[str, Any] = {"answer": answer}
        raw = sample.get("types")
        if isinstance(raw, Mapping):
            types = {k: raw[k] for k in TYPE_KEYS if isinstance(raw.get(k), str)}
        else:
            types = {}
            if isinstance(sample.get("question_type"), str):
                types["detailed"] = sample["question_type"]
            if sample.get("answer_type") in STRUCTURAL_TYPES:
                types["structural"] = sample["answer_type"]
        if types:
            out["types"] = types
        return out

    def parse(self, text: str) -> str:
        """The first line, stripped, then LLaVA's conversion (trailing periods off, lower-cased)."""
        return llava_postprocess(super().parse(text))

    def score(self, records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[float]]:
        return score_records(list(records), self.lenient)

    def baselines(
        self, train: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """``answer_prior``: answer every question with the most common training answer of its
        detailed type (GQA is balanced against such priors; a model must beat it by far)."""
        import random

        n = len(train)
        indices = range(n) if n <= PRIOR_SAMPLES else random.Random(0).sample(range(n), PRIOR_SAMPLES)
        counts: dict[Any, Counter] = {}
        for i in indices:
            refs = self.references(train[i])
            counts.setdefault(refs.get("types", {}).get("detailed"), Counter())[refs["answer"]] += 1
        if not counts:
            return {}
        prior = {k: c.most_common(1)[0][0] for k, c in counts.items()}
        fallback = sum(counts.values(), Counter()).most_common(1)[0][0]
        guesses = [{**r, "prediction": prior.get((r.get("types") or {}).get("detailed"), fallback)} for r in records]
        return {"answer_prior": self.score(guesses)[0]}


def build(config: Any, ctx: Any) -> GqaEvaluator:
    return GqaEvaluator(config)
