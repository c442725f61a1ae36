"""``coco-caption``: BLEU-1..4 and CIDEr-D as the COCO caption evaluation (pycocoevalcap) computes them.

Predictions and references are tokenised like pycocoevalcap's PTB tokenizer (a pure-Python
equivalent of Stanford's, lower-cased, punctuation dropped); BLEU is corpus-level with the closest
reference length, CIDEr-D uses n-grams 1..4, sigma 6 and document frequencies from the evaluated
references. References are read from ``captions`` (a list of strings) or ``answers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class CaptionConfig:
    prompt_suffix: str = field(
        default="",
        metadata={
            "help": "Appended to the last user turn when generating, e.g. "
            "'Provide a one-sentence caption for the provided image.'"
        },
    )


SPEC = ComponentSpec(
    name="coco-caption",  # "caption" is the dataset format's name; component names are unique across families
    summary="COCO caption metrics: CIDEr-D and BLEU-1..4 as pycocoevalcap computes them (PTB tokenisation)",
    factory="vlmplug.plugins.evaluators._caption:build",
    config=CaptionConfig,
)


@hookimpl
def register_evaluators(register) -> None:
    register(SPEC)
