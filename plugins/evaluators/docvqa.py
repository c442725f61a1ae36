"""``docvqa``: ANLS, the Average Normalized Levenshtein Similarity of the DocVQA / ST-VQA evaluation
(Biten et al. 2019; the official DocVQA / InfographicVQA scoring script of the Robust Reading Competition).

A question scores ``1 - min NLD`` over its reference answers (NLD: edit distance of the normalised
strings over the longer raw string's length), set to 0 below ``threshold``; ``accuracy`` is the
exact match after the same normalisation. References are read from ``answers`` (a list of strings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmplug import ComponentSpec, hookimpl

from .vqa import prompt_suffix_option


@dataclass(frozen=True, kw_only=True)
class DocvqaConfig:
    threshold: float = field(
        default=0.5,
        metadata={
            "help": "ANLS threshold: a question whose best similarity is below it scores 0 "
            "(a similarity exactly at the threshold is kept, as in the official script)."
        },
    )
    prompt_suffix: str = prompt_suffix_option()

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ValueError(f"threshold must be a number in [0, 1], got {self.threshold!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")


SPEC = ComponentSpec(
    name="docvqa",
    summary="DocVQA / ST-VQA ANLS (official normalisation and threshold 0.5) and exact-match accuracy",
    factory="vlmplug.plugins.evaluators._docvqa:build",
    config=DocvqaConfig,
)


@hookimpl
def register_evaluators(register) -> None:
    register(SPEC)
