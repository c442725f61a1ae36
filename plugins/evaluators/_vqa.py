"""The ``vqa`` evaluator: prompting, answer parsing and scoring with :mod:`._vqa_metric`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._vqa_metric import score_samples


class VqaEvaluator:
    reference_key = "answers"

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

    def references(self, sample: Mapping[str, Any]) -> list[Any]:
        if sample.get(self.reference_key):
            refs = sample[self.reference_key]
            return list(refs) if isinstance(refs, (list, tuple)) else [refs]
        last = [m for m in sample["messages"] if m["role"] == "assistant"][-1]
        return [last["content"]]

    def parse(self, text: str) -> str:
        text = text.strip()
        return text.splitlines()[0].strip() if text else ""

    def score(self, records: Iterable[Mapping[str, Any]]) -> tuple[dict[str, float], list[float]]:
        return score_samples(list(records))


def build(config: Any, ctx: Any) -> VqaEvaluator:
    return VqaEvaluator(config)
