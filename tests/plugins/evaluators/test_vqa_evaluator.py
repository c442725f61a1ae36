"""The ``vqa`` evaluator's prompting, references and answer parsing."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from vlmplug.plugins.evaluators import vqa as vqa_plugin
from vlmplug.plugins.evaluators._vqa import VqaEvaluator

SAMPLE: dict[str, Any] = {
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
    typed = {**SAMPLE, "answers": ["2"], "question_type": "how many", "answer_type": "number"}
    assert ev.references(typed) == {"answers": ["2"], "question_type": "how many", "answer_type": "number"}
    assert ev.references({**SAMPLE, "answers": ["2"], "question_type": None, "answer_type": None}) == {"answers": ["2"]}


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
    assert _evaluator(tiny, process_prediction=False).parse(text) == expected


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


def test_score_is_the_official_vqav2_accuracy_with_per_type_breakdowns(tiny):
    ten_yes = ["yes"] * 10
    metrics, per_sample = _evaluator(tiny).score(
        [
            {"prediction": "yes", "answers": ten_yes, "question_type": "is the", "answer_type": "yes/no"},
            # the ten references agree, so the prediction is not lower-cased: 0.0 (official)
            {"prediction": "Yes", "answers": ten_yes, "question_type": "is the", "answer_type": "yes/no"},
            # they disagree, so both sides are normalised: "Two" -> "2", 3 of 10 -> 0.9
            {
                "prediction": "Two",
                "answers": ["2"] * 3 + ["3"] * 7,
                "question_type": "how many",
                "answer_type": "number",
            },
        ]
    )
    assert per_sample == pytest.approx([1.0, 0.0, 0.9])
    assert metrics["accuracy"] == pytest.approx(1.9 / 3)
    assert metrics["count"] == 3
    assert metrics["per_type"] == pytest.approx({"is_the": 0.5, "how_many": 0.9})
    assert metrics["per_answer_type"] == pytest.approx({"yes/no": 0.5, "number": 0.9})
    assert metrics["yes_ratio"] == pytest.approx(1.0)


def test_score_names_the_bad_row(tiny):
    with pytest.raises(ValueError, match=r"^row 1: missing 'answers'"):
        _evaluator(tiny).score([{"prediction": "a", "answers": ["a"]}, {"prediction": "b"}])


def test_generations_are_processed_like_llavas_submission_unless_turned_off(tiny):
    # all ten references agree: the official script compares raw strings, so "Yes." would score 0
    record = {"answers": ["yes"] * 10}
    on, off = _evaluator(tiny), _evaluator(tiny, process_prediction=False)
    assert on.parse("Yes.\nBecause ...") == "yes"
    assert on.score([{**record, "prediction": on.parse("Yes.")}])[0]["accuracy"] == 1.0
    assert off.parse("Yes.") == "Yes."
    assert off.score([{**record, "prediction": off.parse("Yes.")}])[0]["accuracy"] == 0.0
    assert on.parse("Two dogs") == "2 dogs"
