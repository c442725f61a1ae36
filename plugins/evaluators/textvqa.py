"""``textvqa``: TextVQA accuracy as the standard evaluator computes it (Singh et al. 2019).

Every answer, prediction and references alike, is normalised by the TextVQA answer processor
(lower-case, commas and question marks deleted, ``'s`` split off, then VQA's punctuation, number
word, article and contraction rules), and the prediction scores the mean over the leave-one-out
subsets of ``min(1, matches / 3)``; a sample with a single reference is scored by exact match
after normalisation.  Prompting and parsing are ``vqa``'s; references are read from ``answers``
(a list of strings or ``{"answer": ...}`` dicts).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmplug import ComponentSpec, hookimpl

from .vqa import prompt_suffix_option


@dataclass(frozen=True, kw_only=True)
class TextVqaConfig:
    prompt_suffix: str = prompt_suffix_option()


SPEC = ComponentSpec(
    name="textvqa",
    summary="TextVQA accuracy as the M4C/LLaVA evaluator (both sides normalised, 10-way leave-one-out)",
    factory="vlmplug.plugins.evaluators._textvqa:build",
    config=TextVqaConfig,
)


@hookimpl
def register_evaluators(register) -> None:
    register(SPEC)
