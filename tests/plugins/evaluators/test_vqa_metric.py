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
    # the official rules apply unchanged to 2..9 references.
    # 3 refs, 2 match: each matching one left out -> 1/3, the other -> 2/3;
    # mean (1/3 + 1/3 + 2/3) / 3 = 4/9
    assert vqa_accuracy("red", ["red", "red", "blue"]) == pytest.approx(4 / 9)
    # 2 refs, both match: each sees one match among the others
    assert vqa_accuracy("red", ["red", "red"]) == pytest.approx(1 / 3)


# -- the official branches, hand-computed ------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("yes", 1.0),  # every left-out subset holds 9 matches
        ("  yes\n", 1.0),  # the prediction's whitespace is always cleaned
        ("Yes", 0.0),  # references agree: no lower-casing ...
        ("yes.", 0.0),  # ... no punctuation processing ...
        ("a yes", 0.0),  # ... and no article removal
    ],
)
def test_agreeing_references_compare_the_prediction_unprocessed(prediction, expected):
    assert vqa_accuracy(prediction, ["yes"] * 10) == expected


def test_agreeing_references_are_not_lower_cased_either():
    assert vqa_accuracy("Yes", ["Yes"] * 10) == 1.0
    assert vqa_accuracy("yes", ["Yes"] * 10) == 0.0
    assert vqa_accuracy("a dog", ["dog"] * 10) == 0.0


def test_disagreeing_references_normalise_both_sides():
    # nine "yes" and one "Yes" differ, so every reference becomes "yes" and so does "Yes.":
    # each left-out subset holds 9 matches -> 1.0
    assert vqa_accuracy("Yes.", ["yes"] * 9 + ["Yes"]) == 1.0
    # "Two", "two", "TWO" and "2" all become "2": each subset of 3 holds 3 matches -> 1.0
    assert vqa_accuracy("2", ["Two", "two", "TWO", "2"]) == 1.0
    # 4 of 10 say "2" once processed -> 1.0; "Two." -> "2"
    assert vqa_accuracy("Two.", ["2"] * 4 + ["three"] * 6) == pytest.approx(1.0)
    # references processed too: "t-shirt" -> "t shirt"; 3 of 10 match -> 0.9
    assert vqa_accuracy("T shirt", ["t-shirt"] * 3 + ["shirt"] * 7) == pytest.approx(0.9)


def test_reference_whitespace_is_cleaned_before_the_agreement_check():
    # " yes" and "yes\t" equal "yes" after cleaning, so the references agree and the
    # prediction is compared unprocessed
    refs = ["yes"] * 8 + [" yes", "yes\t"]
    assert vqa_accuracy("yes", refs) == 1.0
    assert vqa_accuracy("Yes", refs) == 0.0
    # inside the text only "\n" and "\t" become spaces: "red\ncar" agrees with "red car" ...
    assert vqa_accuracy("Red car", ["red car"] * 9 + ["red\ncar"]) == 0.0
    # ... "red\rcar" does not, so everything is normalised (split() splits at "\r")
    assert vqa_accuracy("Red car", ["red car"] * 9 + ["red\rcar"]) == 1.0


def test_leave_one_out_compares_annotation_dicts():
    # VQAv2 annotations differ by answer_id: leave-one-out by position, 10 matches -> 1.0
    with_ids = [{"answer": "yes", "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)]
    assert vqa_accuracy("yes", with_ids) == 1.0
    # dicts equal in every key are left out together: each subset is empty -> 0.0 (official)
    assert vqa_accuracy("yes", [{"answer": "yes"}] * 10) == 0.0
    # 3 identical "cat" dicts + 7 "dog": leaving out a "cat" drops all three (0 matches), leaving
    # out a "dog" keeps 3 matches: (3 * 0 + 7 * 1) / 10 = 0.7 (by position it would be 0.9)
    refs = [{"answer": "cat"}] * 3 + [{"answer": "dog", "answer_id": i} for i in range(7)]
    assert vqa_accuracy("cat", refs) == pytest.approx(0.7)
    # the comparison sees the processed answers: "Cat" and "cat." both become "cat", so the two
    # dicts are equal and are left out together; the 8 "dog" ids differ.
    # leaving out either "cat" dict: 0 matches; leaving out a "dog": 2 matches -> 2/3
    refs = [{"answer": "Cat"}, {"answer": "cat."}] + [{"answer": "dog", "answer_id": i} for i in range(8)]
    assert vqa_accuracy("cat", refs) == pytest.approx(8 * (2 / 3) / 10)
    # plain strings are distinct by position
    assert vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)


def test_leave_one_out_helper():
    assert _vqa_metric.leave_one_out("a", ["a", "a", "b"]) == pytest.approx(4 / 9)
    # identities: references with the same identity are left out together
    assert _vqa_metric.leave_one_out("a", ["a", "a", "a", "a"], ["x", "x", "y", "z"]) == pytest.approx(
        (2 / 3 + 2 / 3 + 1 + 1) / 4  # leaving out an "x" drops both "x"
    )
    with pytest.raises(ValueError, match="empty"):
        _vqa_metric.leave_one_out("a", [])


def test_single_answer_is_exact_match_after_normalisation():
    # vlmplug extension: the official leave-one-out would give 0.0 for any single reference
    assert vqa_accuracy("The Dog.", ["dog"]) == 1.0
    assert vqa_accuracy("two", ["2"]) == 1.0
    assert vqa_accuracy("dog", [{"answer": "Dog!"}]) == 1.0
    assert vqa_accuracy("dogs", ["dog"]) == 0.0


def test_accuracy_errors():
    with pytest.raises(ValueError, match="at least one reference"):
        vqa_accuracy("yes", [])
    with pytest.raises(TypeError, match="single string"):
        vqa_accuracy("yes", "yes")
    with pytest.raises(ValueError, match=r"answers\[1\] has no 'answer' key"):
        vqa_accuracy("yes", [{"answer": "yes"}, {"text": "yes"}])
    with pytest.raises(TypeError, match=r"answers\[0\] must be a string"):
        vqa_accuracy("yes", [3, "yes"])
    with pytest.raises(TypeError, match="prediction must be a string"):
        vqa_accuracy(None, ["yes", "no"])


# --------------------------------------------------------------------------
# score_samples
# --------------------------------------------------------------------------


def test_score_samples_mixed_answer_forms():
    samples = [
        {"prediction": "cat", "answers": ["cat"] * 3 + ["dog"] * 7},  # 0.9
        {"prediction": "2", "answers": [{"answer": "2", "answer_id": i} for i in range(10)]},  # 1.0
        # the references agree, so "two" is not turned into "2": 0.0 (official)
        {"prediction": "two", "answers": [{"answer": "2", "answer_id": i} for i in range(10)]},
        {"prediction": "Red", "answers": "red"},  # single string: 1.0
        {"prediction": "blue", "answers": ["red"]},  # 0.0
    ]
    metrics, scores = score_samples(samples)
    assert scores == pytest.approx([0.9, 1.0, 0.0, 1.0, 0.0])
    assert metrics["accuracy"] == pytest.approx(2.9 / 5)
    assert metrics["count"] == 5
    assert set(metrics) == {"accuracy", "count"}


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
    assert metrics["per_type"] == pytest.approx({"what_color_is_the": 0.5, "how_many": 1.0})
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert "per_answer_type" not in metrics


def test_per_answer_type_metrics():
    samples = [
        {"prediction": "yes", "answers": ["yes"] * 10, "answer_type": "yes/no"},
        {"prediction": "no", "answers": ["yes"] * 10, "answer_type": "yes/no"},
        {"prediction": "2", "answers": ["2"] * 3 + ["3"] * 7, "answer_type": "number"},  # 0.9
        {"prediction": "red", "answers": ["red"] * 10, "answer_type": ""},  # empty: overall only
    ]
    metrics, _ = score_samples(samples)
    assert metrics["per_answer_type"] == pytest.approx({"yes/no": 0.5, "number": 0.9})
    assert metrics["accuracy"] == pytest.approx(2.9 / 4)
    assert "per_type" not in metrics


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


def test_record_label_and_custom_accuracy():
    with pytest.raises(ValueError, match=r"^record 0: missing 'answers'"):
        score_samples([{"prediction": "x"}], label="record")
    _, scores = score_samples([{"prediction": "a", "answers": ["b"]}], accuracy=lambda pred, refs: float(len(refs)))
    assert scores == [1.0]


def test_public_api():
    assert set(_vqa_metric.__all__) == {
        "clean_whitespace",
        "process_punctuation",
        "process_digit_article",
        "normalize_answer",
        "leave_one_out",
        "vqa_accuracy",
        "score_samples",
    }
