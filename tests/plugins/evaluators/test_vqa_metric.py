"""Tests for the pure-Python VQAv2 accuracy metric."""

import pytest

from vlmplug.plugins.evaluators import _vqa_metric
from vlmplug.plugins.evaluators._vqa_metric import (
    normalize_answer,
    score_samples,
    vqa_accuracy,
)

# --------------------------------------------------------------------------
# normalize_answer
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        # whitespace: newline / tab become spaces, ends stripped, runs collapsed
        ("  Yes\n", "yes"),
        ("red\tand\nblue", "red and blue"),
        # number words -> digits, including "none"
        ("two", "2"),
        ("Ten", "10"),
        ("none", "0"),
        ("zero dogs", "0 dogs"),
        # articles dropped anywhere
        ("a dog", "dog"),
        ("The cat and an apple", "cat and apple"),
        # contractions restored
        ("dont", "don't"),
        ("whats that", "what's that"),
        ("somebody'd", "somebodyd"),  # odd, but it is the official table
        # apostrophes are not punctuation: kept as is
        ("don't", "don't"),
        # punctuation next to a space is deleted ...
        ("yes !", "yes"),
        ("hot dog, bun", "hot dog bun"),
        # ... otherwise it becomes a space
        ("t-shirt", "t shirt"),
        ("red/white", "red white"),
        ("(a)dog", "dog"),
        # the decision is per mark for the whole string: one "- " deletes all
        ("t-shirt - x", "tshirt x"),
        # a digit,digit group anywhere deletes every mark outright
        ("10,000", "10000"),
        ("1,5 t-shirt", "15 tshirt"),
        ("1, 2", "1 2"),
        ("a,b", "b"),  # "a b" -> article "a" dropped
        # periods: stray ones deleted, before a digit kept
        ("dog.", "dog"),
        ("3.5", "3.5"),
        ("3.5.", "3.5"),
        ("e.g", "eg"),
        (".5", ".5"),
        # characters outside the official list are kept
        ("10:30", "10:30"),
        ("#1", "#1"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_only_newline_and_tab_become_spaces_before_punctuation():
    # "\n" becomes a space first, so the trailing "-" is next to a space and
    # every "-" is deleted; "\r" is left alone, so every "-" becomes a space
    # (as in the official code).
    assert normalize_answer("t-shirt\n-") == "tshirt"
    assert normalize_answer("t-shirt\r-") == "t shirt"


def test_normalize_deletes_at_most_32_stray_periods_like_official():
    assert normalize_answer("x." * 32) == "x" * 32
    assert normalize_answer("x." * 34) == "x" * 32 + "x.x."


def test_normalize_is_idempotent_on_typical_answers():
    for raw in ["Two dogs.", "a T-shirt!", "10,000", "dont know", "3.5 m"]:
        once = normalize_answer(raw)
        assert normalize_answer(once) == once


def test_normalize_rejects_non_strings():
    with pytest.raises(TypeError, match="string"):
        normalize_answer(3)


# --------------------------------------------------------------------------
# vqa_accuracy
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "matches, expected",
    [
        # 10 references, k of them equal to the prediction.  A matching
        # reference left out sees k-1 matches, a non-matching one sees k:
        # score = (k * min(1, (k-1)/3) + (10-k) * min(1, k/3)) / 10
        (0, 0.0),
        (1, 0.3),  # (1*0 + 9*1/3) / 10
        (2, 0.6),  # (2*1/3 + 8*2/3) / 10
        (3, 0.9),  # (3*2/3 + 7*1) / 10
        (4, 1.0),  # (4*1 + 6*1) / 10
        (7, 1.0),
        (10, 1.0),
    ],
)
def test_leave_one_out_average_with_ten_answers(matches, expected):
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


def test_leave_one_out_with_few_answers():
    # 3 refs, 2 match: each matching one left out -> 1/3, the other -> 2/3;
    # mean (1/3 + 1/3 + 2/3) / 3 = 4/9
    assert vqa_accuracy("red", ["red", "red", "blue"]) == pytest.approx(4 / 9)
    # 2 refs, both match: each sees one match among the others
    assert vqa_accuracy("red", ["red", "red"]) == pytest.approx(1 / 3)


def test_accuracy_normalises_both_sides():
    answers = ["2"] * 4 + ["3"] * 6
    assert vqa_accuracy("Two.", answers) == pytest.approx(1.0)
    # references are normalised too (the official script would give 0 here)
    assert vqa_accuracy("2", ["Two", "two", "TWO", "2"]) == pytest.approx(1.0)
    assert vqa_accuracy("a dog", ["dog"] * 10) == pytest.approx(1.0)


def test_single_answer_is_exact_match_after_normalisation():
    assert vqa_accuracy("The Dog.", ["dog"]) == 1.0
    assert vqa_accuracy("dogs", ["dog"]) == 0.0


def test_accuracy_errors():
    with pytest.raises(ValueError, match="at least one reference"):
        vqa_accuracy("yes", [])
    with pytest.raises(TypeError, match="single string"):
        vqa_accuracy("yes", "yes")


# --------------------------------------------------------------------------
# score_samples
# --------------------------------------------------------------------------


def test_score_samples_mixed_answer_forms():
    samples = [
        {"prediction": "cat", "answers": ["cat"] * 3 + ["dog"] * 7},  # 0.9
        {"prediction": "two", "answers": [{"answer": "2", "answer_id": i} for i in range(10)]},  # 1.0
        {"prediction": "Red", "answers": "red"},  # single string: 1.0
        {"prediction": "blue", "answers": ["red"]},  # 0.0
    ]
    metrics, scores = score_samples(samples)
    assert scores == pytest.approx([0.9, 1.0, 1.0, 0.0])
    assert metrics["accuracy"] == pytest.approx(2.9 / 4)
    assert metrics["count"] == 4
    assert not any(k.startswith("accuracy_") for k in metrics)
    assert "yes_ratio" not in metrics


def test_score_samples_custom_keys_and_generator_input():
    rows = ({"pred": p, "refs": ["yes"] * 10} for p in ["yes", "no"])
    metrics, scores = score_samples(rows, prediction_key="pred", answers_key="refs")
    assert scores == [1.0, 0.0]
    assert metrics["accuracy"] == pytest.approx(0.5)


def test_per_question_type_metrics():
    samples = [
        {"prediction": "red", "answers": ["red"] * 10, "question_type": "What color is the"},
        {"prediction": "blue", "answers": ["red"] * 10, "question_type": "what color is the"},
        {"prediction": "2", "answers": ["2"] * 10, "question_type": "How many"},
        {"prediction": "yes", "answers": ["yes"] * 10},  # no type: overall only
    ]
    metrics, _ = score_samples(samples)
    assert metrics["accuracy_what_color_is_the"] == pytest.approx(0.5)
    assert metrics["accuracy_how_many"] == pytest.approx(1.0)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert {k for k in metrics if k.startswith("accuracy_")} == {
        "accuracy_what_color_is_the",
        "accuracy_how_many",
    }


def test_yes_ratio_counts_only_yes_no_questions():
    samples = [
        {"prediction": "Yes.", "answers": ["yes"] * 6 + ["no"] * 4},
        {"prediction": "yes", "answers": ["no"] * 10},
        {"prediction": "no", "answers": [{"answer": "No"}] * 10},
        {"prediction": "yes", "answers": ["NO"]},
        # not a yes/no question: ignored for the ratio even if it says "yes"
        {"prediction": "yes", "answers": ["yes"] * 9 + ["maybe"]},
    ]
    metrics, _ = score_samples(samples)
    assert metrics["yes_ratio"] == pytest.approx(3 / 4)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"answers": ["x"]}, "row 1: missing 'prediction' (each line needs 'prediction' and 'answers')"),
        ({"prediction": "x"}, "row 1: missing 'answers' (each line needs 'prediction' and 'answers')"),
        ({"prediction": "x", "answers": []}, "row 1: 'answers' is empty"),
        ({"prediction": "x", "answers": [{"text": "x"}]}, "row 1: 'answers'[0] has no 'answer' key"),
        ({"prediction": "x", "answers": ["x", 3]}, "row 1: 'answers'[1] must be a string"),
        ({"prediction": None, "answers": ["x"]}, "row 1: 'prediction' must be a string"),
        ({"prediction": "x", "answers": 3}, "row 1: 'answers' must be a string, a list"),
        (["x"], "row 1: expected a mapping"),
    ],
)
def test_score_samples_errors_name_the_row(row, message):
    samples = [{"prediction": "x", "answers": ["x"]}, row]
    with pytest.raises(ValueError) as excinfo:
        score_samples(samples)
    assert str(excinfo.value).startswith(message)


def test_missing_key_message_uses_custom_keys():
    with pytest.raises(ValueError) as excinfo:
        score_samples([{"pred": "x"}], prediction_key="pred", answers_key="refs")
    assert str(excinfo.value) == "row 0: missing 'refs' (each line needs 'pred' and 'refs')"


def test_score_samples_rejects_empty_input():
    with pytest.raises(ValueError, match="no samples"):
        score_samples([])


def test_public_api():
    assert set(_vqa_metric.__all__) == {"normalize_answer", "vqa_accuracy", "score_samples"}
