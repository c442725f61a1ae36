"""``vqa``: VQAv2 accuracy exactly as the official evaluation script computes it (Antol et al. 2015).

The prediction and the reference answers have their whitespace cleaned; only when the references
disagree are both sides fully normalised (punctuation, number words, articles, contractions);
the accuracy is the mean over the leave-one-out subsets of ``min(1, matches / 3)``.  A sample
with a single reference is scored by exact match after normalising both sides (a vlmplug
extension).  References are read from ``answers`` (a list of strings or VQAv2 ``{"answer": ...}``
dicts); ``question_type`` and ``answer_type`` give per-type accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmplug import ComponentSpec, hookimpl


def prompt_suffix_option(example: str = "LLaVA's 'Answer the question using a single word or phrase.'") -> Any:
    """The ``prompt_suffix`` option most evaluators share (a dataclass field)."""
    return field(default="", metadata={"help": f"Appended to the last user turn when generating, e.g. {example}"})


@dataclass(frozen=True, kw_only=True)
class VqaConfig:
    prompt_suffix: str = prompt_suffix_option()
    process_prediction: bool = field(
        default=True,
        metadata={
            "help": "Normalise each generated answer with the EvalAI answer processor (lower-case, "
            "punctuation, number words, articles) before scoring, as LLaVA does before submitting to "
            "the VQAv2 server; false scores the first line as generated."
        },
    )


SPEC = ComponentSpec(
    name="vqa",
    summary="VQAv2 accuracy as the official vqaEval.py (10-way leave-one-out; exact match for one answer)",
    factory="vlmplug.plugins.evaluators._vqa:build",
    config=VqaConfig,
)


@hookimpl
def register_evaluators(register) -> None:
    register(SPEC)
