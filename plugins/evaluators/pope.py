"""``pope``: POPE object-hallucination probes (Li et al. 2023), scored like the official evaluate script.

A generated answer counts as "no" when its first sentence, commas removed and split on spaces,
contains the word ``No``, ``not`` or ``no``, and as "yes" otherwise; "yes" is the positive class.
Reports accuracy, precision, recall, F1, the share of "yes" answers and the confusion counts,
overall and per ``sampling`` (random / popular / adversarial) when the records carry it.
References are read from ``label`` ("yes" / "no").
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmplug import ComponentSpec, hookimpl

from .vqa import prompt_suffix_option


@dataclass(frozen=True, kw_only=True)
class PopeConfig:
    prompt_suffix: str = prompt_suffix_option()


SPEC = ComponentSpec(
    name="pope",
    summary="POPE object hallucination: accuracy, precision, recall, F1, yes-ratio (official yes/no parsing)",
    factory="vlmplug.plugins.evaluators._pope:build",
    config=PopeConfig,
)


@hookimpl
def register_evaluators(register) -> None:
    register(SPEC)
