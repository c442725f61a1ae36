"""The ``docvqa`` evaluator: ANLS as the official DocVQA script computes it, against hand-computed values."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from vlmplug.errors import DataError
from vlmplug.plugins.evaluators import docvqa as docvqa_plugin
from vlmplug.plugins.evaluators._docvqa import (
    DocvqaEvaluator,
    anls,
    exact_match,
    levenshtein,
    normalize,
    score_records,
)


def _evaluator(tiny, **options) -> DocvqaEvaluator:
    ev = tiny.build(docvqa_plugin.SPEC, tiny.make_ctx(), options)
    assert isinstance(ev, DocvqaEvaluator)
    return ev


# -- Levenshtein and normalisation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("", "", 0),
        ("", "abc", 3),
        ("abc", "", 3),
        ("abc", "abc", 0),
        ("kitten", "sitting", 3),  # two substitutions and one insertion
        ("flaw", "lawn", 2),  # a deletion and an insertion
        ("ab", "ba", 2),  # no transposition operation
        ("straße", "strasse", 2),  # code points: ß -> s and an inserted s
    ],
)
def test_levenshtein(a, b, expected):
    assert levenshtein(a, b) == expected
    assert levenshtein(b, a) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  Dear  DR.\tLobo \n", "dear dr. lobo"),  # strip, lower, whitespace runs -> one space
        ("$5.00, (approx)", "$5.00, (approx)"),  # punctuation is kept
        ("The Answer", "the answer"),  # articles are kept
        ("a\u00a0b", "a b"),  # Unicode whitespace counts as whitespace
        ("", ""),
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


# -- ANLS quirks ---------------------------------------------------------------------------------------


def test_case_and_whitespace_do_not_count():
    assert anls("  dear DR.   lobo", ["Dear Dr. Lobo"]) == 1.0


def test_partial_match_is_one_minus_normalised_distance():
    # "12/15/89" vs "12/15/88": one substitution over 8 characters
    assert anls("12/15/89", ["12/15/88"]) == pytest.approx(1 - 1 / 8)


def test_denominator_uses_raw_not_normalised_lengths():
    # distance("abc", "abd") = 1; the raw prediction "abc   " is 6 long, so 1 - 1/6 (normalised lengths: 1 - 1/3)
    assert anls("abc   ", ["abd"]) == pytest.approx(5 / 6)
    # the same padding on the answer side
    assert anls("abd", ["abc   "]) == pytest.approx(5 / 6)
    assert anls("abd", ["  abc"]) == pytest.approx(1 - 1 / 5)


def test_denominator_uses_upper_case_length():
    # "ßß".upper() == "SSSS": distance 2 over length 4 = 0.5, kept; by the plain lengths it would be 0
    assert anls("ßß", ["xy"]) == 0.5
    assert anls("xy", ["ßß"]) == 0.5  # on the answer side too


def test_both_empty_is_a_perfect_match():
    assert anls("", [""]) == 1.0
    assert anls("   ", [""]) == 1.0  # normalised distance 0 over raw length 3


def test_empty_prediction_against_an_answer():
    assert anls("", ["abc"]) == 0.0  # distance 3 over length 3
    assert anls("", ["x   "]) == 0.75  # distance 1 (normalised "x") over raw length 4


def test_similarity_exactly_at_threshold_is_kept():
    assert anls("abxy", ["abcd"]) == 0.5  # 1 - 2/4
    assert anls("abcd", ["abxy"], threshold=0.5) == 0.5


def test_similarity_below_threshold_is_zeroed():
    assert anls("axy", ["abc"]) == 0.0  # 1 - 2/3 = 0.333 < 0.5
    assert anls("axy", ["abc"], threshold=0.3) == pytest.approx(1 / 3)
    assert anls("vwxyz", ["abxyz"]) == pytest.approx(0.6)
    assert anls("uvwyz", ["abcyz"]) == 0.0  # 1 - 3/5 = 0.4


def test_best_answer_wins():
    assert anls("abcd", ["xyz", "abce", "abcf"]) == pytest.approx(0.75)
    assert anls("Dear dr. Lobo", ["Dr. Lobo", "Dear Dr. Lobo"]) == 1.0


def test_exact_match_uses_the_same_normalisation():
    assert exact_match(" Dear  dr. LOBO ", ["x", "Dear Dr. Lobo"]) == 1.0
    assert exact_match("Dear Dr Lobo", ["Dear Dr. Lobo"]) == 0.0  # punctuation matters


# -- records ---------------------------------------------------------------------------------------------


def test_score_records_hand_computed():
    metrics, scores = score_records(
        [
            {"prediction": "Denver Broncos", "answers": ["Denver Broncos", "Denver R. Broncos"]},
            {"prediction": "12/15/89", "answers": ["12/15/88"]},
            {"prediction": "no idea", "answers": ["42"]},
            {"prediction": "dear dr. lobo", "answers": "Dear Dr. Lobo"},  # a single string is one answer
        ]
    )
    assert scores == pytest.approx([1.0, 0.875, 0.0, 1.0])
    assert metrics["anls"] == pytest.approx(2.875 / 4)
    assert metrics["accuracy"] == pytest.approx(2 / 4)
    assert metrics["count"] == 4


@pytest.mark.parametrize(
    "records, message",
    [
        ([], "no records"),
        (["x"], "record 0: expected a mapping"),
        ([{"answers": ["a"]}], "record 0: missing 'prediction'"),
        ([{"prediction": "a", "answers": ["a"]}, {"prediction": "a"}], "record 1: missing 'answers'"),
        ([{"prediction": 3, "answers": ["a"]}], "record 0: 'prediction' must be a string"),
        ([{"prediction": "a", "answers": []}], "record 0: 'answers' is empty"),
        ([{"prediction": "a", "answers": ["a", 7]}], r"record 0: 'answers'\[1\] must be a string"),
        ([{"prediction": "a", "answers": {"a": 1}}], "record 0: 'answers' must be a list"),
    ],
)
def test_score_records_rejects_bad_records(records, message):
    with pytest.raises(ValueError, match=message):
        score_records(records)


# -- the evaluator ---------------------------------------------------------------------------------------

SAMPLE: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": "<image>\nWhat is the date?"},
        {"role": "assistant", "content": "12/15/88"},
    ],
    "images": ["doc.png"],
    "answers": ["12/15/88", "15 Dec 1988"],
}


def test_evaluator_scores_anls_with_the_configured_threshold(tiny):
    ev = _evaluator(tiny)
    assert ev.primary_metric == "anls"
    records = [{"prediction": "axy", **ev.references({**SAMPLE, "answers": ["abc"]})}]
    assert ev.score(records)[0]["anls"] == 0.0
    assert _evaluator(tiny, threshold=0.3).score(records)[0]["anls"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, True, "0.5"])
def test_threshold_is_validated(tiny, threshold):
    with pytest.raises(ValueError, match="threshold"):
        _evaluator(tiny, threshold=threshold)


def test_prompt_and_suffix(tiny):
    sample = copy.deepcopy(SAMPLE)
    assert _evaluator(tiny).prompt(sample) == [SAMPLE["messages"][0]]
    assert _evaluator(tiny, prompt_suffix="One phrase.").prompt(sample) == [
        {"role": "user", "content": "<image>\nWhat is the date?\nOne phrase."}
    ]
    assert sample == SAMPLE


def test_prompt_without_assistant_turn_uses_the_whole_conversation(tiny):
    sample = {"messages": [SAMPLE["messages"][0]], "answers": ["x"]}
    assert _evaluator(tiny).prompt(sample) == [SAMPLE["messages"][0]]
    with pytest.raises(DataError, match="user turn"):
        _evaluator(tiny).prompt({"messages": [{"role": "assistant", "content": "x"}], "_where": "d.jsonl:3"})


def test_references(tiny):
    ev = _evaluator(tiny)
    assert ev.references(SAMPLE) == {"answers": ["12/15/88", "15 Dec 1988"]}
    assert ev.references({**SAMPLE, "answers": "x"}) == {"answers": ["x"]}
    assert ev.references({**SAMPLE, "answers": []}) == {"answers": ["12/15/88"]}  # last assistant turn
    with pytest.raises(DataError, match="neither 'answers'"):
        ev.references({"messages": [SAMPLE["messages"][0]]})


@pytest.mark.parametrize("text, expected", [("  1988 \nbecause", "1988"), ("", ""), ("\n\n x", "x")])
def test_parse_keeps_first_line(tiny, text, expected):
    assert _evaluator(tiny).parse(text) == expected
