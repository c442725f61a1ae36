"""``multiple-choice``: MMBench / SEED-Bench style questions with lettered options.

The prompt lists the options ("A. cat", "B. dog", ...) under the question; the option letter is read
from the generated text by rule-based matching in the spirit of MMBench's (a lone letter, "(B)",
"Answer: C", the option's own text...); an answer that matches nothing, or several options, counts
as wrong (``unparsed``). With ``circular`` (MMBench's CircularEval) every question is asked once per
rotation of its options and counts as correct only if every rotation is answered correctly.
Samples carry ``options`` (``{"A": text, ...}`` or a list of texts) and ``answer`` (letter or text).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmplug import ComponentSpec, hookimpl

DEFAULT_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True, kw_only=True)
class MultipleChoiceConfig:
    instruction: str = field(
        default=DEFAULT_INSTRUCTION,
        metadata={"help": "Line appended after the options in the prompt (empty: none)."},
    )
    circular: bool = field(
        default=True,
        metadata={
            "help": "MMBench CircularEval: ask each question once per rotation of its options; a "
            "question is correct only if all rotations are (false: ask each question once)."
        },
    )


SPEC = ComponentSpec(
    name="multiple-choice",
    summary="MMBench / SEED-Bench multiple choice: option-letter matching, CircularEval, per-category accuracy",
    factory="vlmplug.plugins.evaluators._multiple_choice:build",
    config=MultipleChoiceConfig,
)


@hookimpl
def register_evaluators(register) -> None:
    register(SPEC)
