"""The ``vqa`` evaluator: prompting, answer parsing, scoring with :mod:`._vqa_metric`, and the
answer-prior baseline (the most common training answer per question type)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from vlmplug.contracts import EvaluatorBase

from ._common import conversation
from ._vqa_metric import score_samples

PRIOR_SAMPLES = 5000


class VqaEvaluator(EvaluatorBase):
    primary_metric = "accuracy"

    def __init__(self, config: Any):
        self.suffix = config.prompt_suffix
        #: Normalise generations like LLaVA's submission conversion (``process_prediction``).
        self.process_prediction = bool(getattr(config, "process_prediction", False))

    def prompt(self, sample: Mapping[str, Any]) -> list[dict[str, str]]:
        """The conversation up to (not including) the last assistant turn."""
        return conversation(sample, self.suffix)

    def references(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """``answers`` (the sample's, else the last assistant turn), and ``question_type`` and
        ``answer_type`` when present."""
        refs = sample.get("answers")
        if refs:
            answers = list(refs) if isinstance(refs, (list, tuple)) else [refs]
        else:
            answers = [[m for m in sample["messages"] if m["role"] == "assistant"][-1]["content"]]
        out: dict[str, Any] = {"answers": answers}
        for key in ("question_type", "answer_type"):
            if sample.get(key) is not None:
                out[key] = sample[key]
        return out

    def parse(self, text: str) -> str:
        """The first line, stripped; with ``process_prediction``, through the EvalAI answer processor."""
        text = text.strip()
        first = text.splitlines()[0].strip() if text else ""
        if self.process_prediction:
            from ._textvqa import process_answer  # the processor TextVQA applies to both sides

            return process_answer(first)
        return first

    def score(self, records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[float]]:
        return score_samples(list(records))

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
