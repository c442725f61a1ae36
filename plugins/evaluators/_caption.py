"""The ``coco-caption`` evaluator: prompting, caption parsing and scoring with :mod:`._caption_metrics`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vlmplug.contracts import EvaluatorBase

from ._caption_metrics import caption_scores
from ._common import conversation


def _references(raw: Any, where: str, key: str) -> list[str]:
    """``raw`` (a caption or a list of captions) as a checked, non-empty list of strings."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"{where}: {key!r} must be a string or a list of strings, got {type(raw).__name__}")
    if not raw:
        raise ValueError(f"{where}: {key!r} is empty (each record needs at least one reference caption)")
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise ValueError(f"{where}: {key!r}[{i}] must be a string, got {type(item).__name__}")
    return list(raw)


class CaptionEvaluator(EvaluatorBase):
    primary_metric = "cider"

    def __init__(self, config: Any):
        self.suffix = config.prompt_suffix

    def prompt(self, sample: Mapping[str, Any]) -> list[dict[str, str]]:
        """The conversation up to (not including) the last assistant turn, the suffix appended to
        the turn before it."""
        return conversation(sample, self.suffix)

    def references(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """``captions``: the sample's ``captions`` (the ``caption`` dataset format sets all the
        captions of the image there), else its ``answers``, else the last assistant turn."""
        for key in ("captions", "answers"):
            refs = sample.get(key)
            if refs:
                return {"captions": [refs] if isinstance(refs, str) else list(refs)}
        return {"captions": [[m for m in sample["messages"] if m["role"] == "assistant"][-1]["content"]]}

    def parse(self, text: str) -> str:
        """The whole generated text, stripped (the tokenizer ignores line breaks)."""
        return text.strip()

    def score(self, records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[float]]:
        """CIDEr-D (``cider``, the mean of the per-record scores) and corpus BLEU-1..4 over all
        records (each record is one image); the per-record score is its CIDEr-D."""
        predictions: list[str] = []
        references: list[list[str]] = []
        for n, record in enumerate(records):
            where = f"record {n}"
            if not isinstance(record, Mapping):
                raise ValueError(
                    f"{where}: expected an object with 'prediction' and 'captions', got {type(record).__name__}"
                )
            if "prediction" not in record:
                raise ValueError(f"{where}: missing 'prediction' (each line needs 'prediction' and 'captions')")
            prediction = record["prediction"]
            if not isinstance(prediction, str):
                raise ValueError(f"{where}: 'prediction' must be a string, got {type(prediction).__name__}")
            key = "captions" if "captions" in record else "answers" if "answers" in record else None
            if key is None:
                raise ValueError(
                    f"{where}: missing 'captions' (the reference captions, a list of strings; 'answers' is read too)"
                )
            predictions.append(prediction)
            references.append(_references(record[key], where, key))
        if not predictions:
            raise ValueError("no records to score")
        metrics, scores = caption_scores(predictions, references)
        return {**metrics, "count": len(scores)}, scores


def build(config: Any, ctx: Any) -> CaptionEvaluator:
    return CaptionEvaluator(config)
