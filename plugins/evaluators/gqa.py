"""``gqa``: GQA accuracy as the official ``eval.py`` computes it (Hudson & Manning 2019).

A generation is parsed as LLaVA prepares GQA predictions (first line, trailing periods removed,
lower-cased) and scores 1.0 when it equals the gold ``answer`` string exactly; ``lenient`` opts into
VQA-style normalisation of both sides.  Accuracy per structural / semantic / detailed type and
binary vs open accuracy are reported when records carry GQA's ``types``.  References are read from
``answer`` (a string) or the first of ``answers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmplug import ComponentSpec, hookimpl

from .vqa import prompt_suffix_option


@dataclass(frozen=True, kw_only=True)
class GqaConfig:
    prompt_suffix: str = prompt_suffix_option()
    lenient: bool = field(
        default=False,
        metadata={
            "help": "Not official: compare prediction and answer after VQA normalisation (lower case, "
            "punctuation and trailing periods, number words, articles) instead of exactly."
        },
    )


SPEC = ComponentSpec(
    name="gqa",
    summary="GQA accuracy as the official eval.py (exact match; binary/open and per-type breakdowns)",
    factory="vlmplug.plugins.evaluators._gqa:build",
    config=GqaConfig,
)


@hookimpl
def register_evaluators(register) -> None:
    register(SPEC)
