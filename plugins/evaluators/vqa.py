"""``vqa``: VQAv2 accuracy as the official evaluation computes it (Antol et al. 2015).

Answers are normalised (punctuation, number words, articles, contractions), and a prediction's
accuracy is the mean over the ten leave-one-out subsets of ``min(1, matches / 3)``; a sample with a
single reference is scored by exact match after normalisation. References are read from
``answers`` (a list of strings or VQAv2 ``{"answer": ...}`` dicts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class VqaConfig:
    prompt_suffix: str = field(
        default="",
        metadata={
            "help": "Appended to the last user turn when generating, e.g. LLaVA's "
            "'Answer the question using a single word or phrase.'"
        },
    )


SPEC = ComponentSpec(
    name="vqa",
    summary="VQAv2 accuracy (official normalisation, 10-way leave-one-out; exact match for one answer)",
    factory="vlmplug.plugins.evaluators._vqa:build",
    config=VqaConfig,
)


@hookimpl
def register_evaluators(register) -> None:
    register(SPEC)
