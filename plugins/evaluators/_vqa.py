"""The ``vqa`` evaluator: prompting, answer parsing, scoring with :mod:`._vqa_metric`, and the
answer-prior baseline (the most common training answer per question type)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from vlmplug.contracts import EvaluatorBase

from ._vqa_metric import score_samples

PRIOR_SAMPLES = 5000


class VqaEvaluator(EvaluatorBase):
    primary_metric = "accuracy"

    def __init__(self, config: Any):
        self.suffix = config.prompt_suffix

    def prompt(self, sample: Mapping[str, Any]) -> list[dict[str, str]]:
        """The conversation up to (not including) the last assistant turn."""
        msgs = list(sample["messages"])
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        msgs = [dict(m) for m in msgs[:last]]
        if self.suffix and msgs:
            msgs[-1]["content"] = f"{msgs[-1]['content']}\n{self.suffix}"
        return msgs

    def references(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """``answers`` (the sample's, else the last assistant turn) and ``question_type`` when present."""
        refs = sample.get("answers")
        if refs:
            answers = list(refs) if isinstance(refs, (list, tuple)) else [refs]
        else:
            answers = [[m for m in sample["messages"] if m["role"] == "assistant"][-1]["content"]]
        out: dict[str, Any] = {"answers": answers}
        if sample.get("question_type") is not None:
            out["question_type"] = sample["question_type"]
        return out

    def parse(self, text: str) -> str:
        text = text.strip()
        return text.splitlines()[0].strip() if text else ""

    def score(self, records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[float]]:
        metrics, scores = score_samples(list(records))
        per_type = {k[len("accuracy_") :]: v for k, v in metrics.items() if k.startswith("accuracy_")}
        out: dict[str, Any] = {k: v for k, v in metrics.items() if not k.startswith("accuracy_")}
        if per_type:
            out["per_type"] = per_type
        return out, scores

    def baselines(
        self, train: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """``answer_prior``: answer every question with the most common training answer of its type
        (a model must beat it to show that it uses the image)."""
        prior = self._prior(train)
        if not prior:
            return {}
        fallback = Counter(prior.values()).most_common(1)[0][0]
        guesses = [{**r, "prediction": prior.get(r.get("question_type"), fallback)} for r in records]
        return {"answer_prior": self.score(guesses)[0]}

    def _prior(self, train: Sequence[Mapping[str, Any]]) -> dict[Any, str]:
        import random

        n = len(train)
        indices = range(n) if n <= PRIOR_SAMPLES else random.Random(0).sample(range(n), PRIOR_SAMPLES)
        counts: dict[Any, Counter] = {}
        for i in indices:
            refs = self.references(train[i])
            first = refs["answers"][0]
            answer = first["answer"] if isinstance(first, Mapping) else first
            counts.setdefault(refs.get("question_type"), Counter())[str(answer)] += 1
        return {k: c.most_common(1)[0][0] for k, c in counts.items()}


def build(config: Any, ctx: Any) -> VqaEvaluator:
    return VqaEvaluator(config)
