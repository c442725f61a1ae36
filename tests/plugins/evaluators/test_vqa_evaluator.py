"""The ``vqa`` evaluator's prompting, references and answer parsing."""

from __future__ import annotations

import copy

import pytest

from vlmplug.plugins.evaluators import vqa as vqa_plugin
from vlmplug.plugins.evaluators._vqa import VqaEvaluator

SAMPLE = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>\nWhat color is the shape?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "And the shape?"},
        {"role": "assistant", "content": "circle"},
    ],
    "images": ["a.png"],
}


def _evaluator(tiny, **options) -> VqaEvaluator:
    ev = tiny.build(vqa_plugin.SPEC, tiny.make_ctx(), options)
    assert isinstance(ev, VqaEvaluator)
    return ev


def test_prompt_drops_final_assistant_turn(tiny):
    sample = copy.deepcopy(SAMPLE)
    prompt = _evaluator(tiny).prompt(sample)
    assert prompt == SAMPLE["messages"][:4]  # earlier assistant turns stay, as context
    assert sample == SAMPLE  # the sample is not modified


def test_prompt_appends_suffix_to_last_turn(tiny):
    suffix = "Answer the question using a single word or phrase."
    sample = copy.deepcopy(SAMPLE)
    prompt = _evaluator(tiny, prompt_suffix=suffix).prompt(sample)
    assert len(prompt) == 4
    assert prompt[-1] == {"role": "user", "content": f"And the shape?\n{suffix}"}
    assert prompt[:3] == SAMPLE["messages"][:3]
    assert sample == SAMPLE


def test_prompt_single_turn(tiny):
    sample = {"messages": SAMPLE["messages"][1:3]}
    assert _evaluator(tiny, prompt_suffix="One word.").prompt(sample) == [
        {"role": "user", "content": "<image>\nWhat color is the shape?\nOne word."}
    ]


def test_references_from_answers(tiny):
    ev = _evaluator(tiny)
    assert ev.primary_metric == "accuracy"
    assert ev.references({**SAMPLE, "answers": ["circle", "round"]}) == {"answers": ["circle", "round"]}
    assert ev.references({**SAMPLE, "answers": ("circle",)}) == {"answers": ["circle"]}
    assert ev.references({**SAMPLE, "answers": "circle"}) == {"answers": ["circle"]}
    assert ev.references({**SAMPLE, "answers": "circle", "question_type": "shape"}) == {
        "answers": ["circle"],
        "question_type": "shape",
    }
    vqav2 = [{"answer": "circle", "answer_confidence": "yes"}]
    assert ev.references({**SAMPLE, "answers": vqav2}) == {"answers": vqav2}


@pytest.mark.parametrize("answers", [None, [], ""])
def test_references_fall_back_to_last_assistant_message(tiny, answers):
    sample = dict(SAMPLE) if answers is None else {**SAMPLE, "answers": answers}
    assert _evaluator(tiny).references(sample) == {"answers": ["circle"]}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("red", "red"),
        ("  red  ", "red"),
        ("red\nbecause the shape is red", "red"),
        ("\n\n  two circles \n three", "two circles"),
        ("", ""),
        ("   \n ", ""),
    ],
)
def test_parse_keeps_first_line(tiny, text, expected):
    assert _evaluator(tiny).parse(text) == expected


def test_score_uses_the_vqa_metric(tiny):
    metrics, per_sample = _evaluator(tiny).score(
        [
            {"prediction": "Red.", "answers": ["red"]},
            {"prediction": "two", "answers": ["2"]},
            {"prediction": "blue", "answers": ["red"]},
        ]
    )
    assert per_sample == [1.0, 1.0, 0.0]
    assert metrics["accuracy"] == pytest.approx(2 / 3)
