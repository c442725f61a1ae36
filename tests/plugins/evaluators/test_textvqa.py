"""The ``textvqa`` evaluator: the TextVQA (M4C / EvalAI answer processor) accuracy, hand-computed."""

from __future__ import annotations

from typing import Any

import pytest

from vlmplug.plugins.evaluators import textvqa as textvqa_plugin
from vlmplug.plugins.evaluators._textvqa import TextVqaEvaluator, process_answer, textvqa_accuracy
from vlmplug.plugins.evaluators._vqa_metric import normalize_answer, vqa_accuracy

SAMPLE: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": "<image>\nWhat brand is the bottle?"},
        {"role": "assistant", "content": "coke"},
    ],
    "images": ["a.jpg"],
    "answers": ["coke"] * 3 + ["coca cola"] * 7,
}


def _evaluator(tiny, **options) -> TextVqaEvaluator:
    ev = tiny.build(textvqa_plugin.SPEC, tiny.make_ctx(), options)
    assert isinstance(ev, TextVqaEvaluator)
    return ev


# -- the answer processor ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Coca Cola", "coca cola"),  # lower-cased
        ("10,000", "10000"),  # commas deleted first
        ("a,b", "ab"),  # ... so no space appears (VQAv2: "a b" -> "b")
        ("what?", "what"),  # question marks deleted
        ("McDonald's", "mcdonald 's"),  # "'s" split off
        ("IT'S", "it 's"),  # after lower-casing
        ("t-shirt", "t shirt"),  # VQA punctuation: a mark not next to a space becomes a space
        ("t-shirt - x", "tshirt x"),  # ... and is deleted everywhere once it is next to one
        ("1,5 t-shirt", "15 t shirt"),  # the digit-comma-digit rule never fires (VQAv2: "15 tshirt")
        ("dog.", "dog"),  # stray period deleted
        ("3.5", "3.5"),  # period before a digit kept
        ("The two dogs", "2 dogs"),  # number words, articles
        ("dont", "don't"),  # contractions
        ("red\nblue\t", "red blue"),  # whitespace
        ("", ""),
    ],
)
def test_process_answer(raw, expected):
    assert process_answer(raw) == expected


def test_process_answer_differs_from_vqa_normalisation_only_where_the_processor_does():
    assert normalize_answer("a,b") == "b" and process_answer("a,b") == "ab"
    assert normalize_answer("1,5 t-shirt") == "15 tshirt" and process_answer("1,5 t-shirt") == "15 t shirt"
    assert normalize_answer("what?") == process_answer("what?") == "what"


def test_process_answer_deletes_at_most_32_stray_periods():
    assert process_answer("x." * 34) == "x" * 32 + "x.x."


def test_process_answer_rejects_non_strings():
    with pytest.raises(TypeError, match="string"):
        process_answer(3)


# -- accuracy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_soft_score(matches, expected):
    # (k * min(1, (k-1)/3) + (10-k) * min(1, k/3)) / 10, as for VQAv2
    assert textvqa_accuracy("coke", ["coke"] * matches + ["pepsi"] * (10 - matches)) == pytest.approx(expected)


def test_both_sides_are_always_normalised():
    # VQAv2's script leaves the prediction unprocessed when the references agree; TextVQA's does not
    assert textvqa_accuracy("Yes.", ["yes"] * 10) == 1.0
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 0.0
    # references are processed too: "Coke!" -> "coke", 3 of 10 -> 0.9
    assert textvqa_accuracy("COKE", ["Coke!"] * 3 + ["pepsi"] * 7) == pytest.approx(0.9)


def test_apostrophe_s_is_split_on_both_sides():
    assert textvqa_accuracy("mcdonald's", ["McDonald's"] * 10) == 1.0
    assert textvqa_accuracy("mcdonalds", ["McDonald's"] * 10) == 0.0


def test_leave_one_out_is_by_position_even_for_equal_dicts():
    # unlike VQAv2's script (which would drop all equal dicts together), TextVQA enumerates
    assert textvqa_accuracy("yes", [{"answer": "yes"}] * 10) == 1.0
    assert textvqa_accuracy("yes", [{"answer": "yes"}] * 3 + [{"answer": "no"}] * 7) == pytest.approx(0.9)


def test_single_reference_is_exact_match_after_processing():
    assert textvqa_accuracy("The Dog.", ["dog"]) == 1.0
    assert textvqa_accuracy("dogs", ["dog"]) == 0.0


def test_accuracy_errors():
    with pytest.raises(ValueError, match="at least one reference"):
        textvqa_accuracy("a", [])
    with pytest.raises(TypeError, match="single string"):
        textvqa_accuracy("a", "a")
    with pytest.raises(ValueError, match=r"answers\[0\] has no 'answer' key"):
        textvqa_accuracy("a", [{"text": "a"}])
    with pytest.raises(TypeError, match=r"answers\[1\] must be a string"):
        textvqa_accuracy("a", ["a", None])


# -- the evaluator -------------------------------------------------------------------------------


def test_prompt_references_and_parse_are_vqa_s(tiny):
    ev = _evaluator(tiny, prompt_suffix="Answer the question using a single word or phrase.")
    assert ev.primary_metric == "accuracy"
    assert ev.prompt(SAMPLE) == [
        {
            "role": "user",
            "content": "<image>\nWhat brand is the bottle?\nAnswer the question using a single word or phrase.",
        }
    ]
    assert ev.references(SAMPLE) == {"answers": SAMPLE["answers"]}
    assert ev.parse("  Coke\nIt says so on the label.") == "Coke"


def test_score(tiny):
    ten = ["coke"] * 3 + ["coca cola"] * 7
    metrics, per_record = _evaluator(tiny).score(
        [
            {"prediction": "Coca-Cola", "answers": ten},  # "coca cola": 7 matches -> 1.0
            {"prediction": "Coke.", "answers": ten},  # 3 matches -> 0.9
            {"prediction": "pepsi", "answers": ten},  # 0.0
            {"prediction": "Stop", "answers": ["stop"]},  # one reference: exact match -> 1.0
        ]
    )
    assert per_record == pytest.approx([1.0, 0.9, 0.0, 1.0])
    assert metrics["accuracy"] == pytest.approx(2.9 / 4)
    assert metrics["count"] == 4


@pytest.mark.parametrize(
    "record, message",
    [
        ({"answers": ["x"]}, "record 1: missing 'prediction'"),
        ({"prediction": "x"}, "record 1: missing 'answers'"),
        ({"prediction": 3, "answers": ["x"]}, "record 1: 'prediction' must be a string"),
        ({"prediction": "x", "answers": []}, "record 1: 'answers' is empty"),
        ({"prediction": "x", "answers": [{"text": "x"}]}, "record 1: 'answers'[0] has no 'answer' key"),
        ({"prediction": "x", "answers": 7}, "record 1: 'answers' must be a string, a list"),
        ("x", "record 1: expected a mapping"),
    ],
)
def test_score_names_the_bad_record(tiny, record, message):
    with pytest.raises(ValueError) as excinfo:
        _evaluator(tiny).score([{"prediction": "x", "answers": ["x"]}, record])
    assert str(excinfo.value).startswith(message)


def test_answer_prior_baseline_is_scored_with_textvqa_accuracy(tiny):
    train = [{**SAMPLE, "answers": ["Coke"] * 10}, {**SAMPLE, "answers": ["Coke"] * 10}, SAMPLE]
    records = [{"answers": ["coke"] * 10}, {"answers": ["pepsi"] * 10}]
    # the most common first answer is "Coke"; processed, it matches "coke" (1.0) but not "pepsi"
    assert _evaluator(tiny).baselines(train, records) == {"answer_prior": {"accuracy": 0.5, "count": 2}}
