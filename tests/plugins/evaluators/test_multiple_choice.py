"""The ``multiple-choice`` evaluator: options, choice extraction, CircularEval and the metrics."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from vlmplug.errors import DataError
from vlmplug.plugins.evaluators import multiple_choice as mc_plugin
from vlmplug.plugins.evaluators._multiple_choice import (
    MultipleChoiceEvaluator,
    answer_letter,
    extract_choice,
    normalize_options,
    rotate,
    score_records,
)


def _evaluator(tiny, **options) -> MultipleChoiceEvaluator:
    ev = tiny.build(mc_plugin.SPEC, tiny.make_ctx(), options)
    assert isinstance(ev, MultipleChoiceEvaluator)
    return ev


# -- options and answers ---------------------------------------------------------------------------------


def test_normalize_options():
    assert normalize_options({"B": "dog", "A": "cat"}) == {"A": "cat", "B": "dog"}
    assert list(normalize_options({"B": "dog", "A": "cat"})) == ["A", "B"]  # letter order
    assert normalize_options(["cat", "dog", 3]) == {"A": "cat", "B": "dog", "C": "3"}
    # MMBench's unused option columns come through as null / NaN: dropped
    assert normalize_options({"A": "cat", "B": "dog", "C": None, "D": float("nan")}) == {"A": "cat", "B": "dog"}


@pytest.mark.parametrize(
    "raw, message",
    [
        ("A. cat B. dog", "must be a dict"),
        ({}, "is empty"),
        ([], "is empty"),
        ({"a": "cat"}, "single letters"),
        ({"AB": "cat"}, "single letters"),
        ({"A": ["cat"]}, "must be a string"),
        (["cat", None], r"'options'\[1\] is empty"),
        ([str(i) for i in range(27)], "at most 26"),
    ],
)
def test_normalize_options_rejects(raw, message):
    with pytest.raises(ValueError, match=message):
        normalize_options(raw)


def test_answer_letter():
    options = {"A": "cat", "B": "Dark  Red", "C": "3"}
    assert answer_letter("B", options) == "B"
    assert answer_letter(" B ", options) == "B"
    assert answer_letter("cat", options) == "A"
    assert answer_letter("dark red", options) == "B"  # case and whitespace runs ignored
    assert answer_letter(3, options) == "C"  # a number is read as an option text
    with pytest.raises(ValueError, match="neither an option letter"):
        answer_letter("D", options)
    assert answer_letter("x", {"A": "X", "B": "x"}) == "B"  # an exact text match comes first
    with pytest.raises(ValueError, match="several options"):
        answer_letter("x", {"A": "x", "B": "x"})
    with pytest.raises(ValueError, match="several options"):
        answer_letter("x", {"A": "X ", "B": " X"})
    with pytest.raises(ValueError, match="must be an option letter"):
        answer_letter(None, options)


def test_rotate_shifts_texts_and_answers():
    options = {"A": "a", "B": "b", "C": "c", "D": "d"}
    assert rotate(options, 0) == options
    assert list(rotate(options, 1).values()) == ["b", "c", "d", "a"]  # ABCD -> BCDA
    assert list(rotate(options, 3).values()) == ["d", "a", "b", "c"]


# -- choice extraction -----------------------------------------------------------------------------------

OPTIONS = {"A": "cat", "B": "dog", "C": "red", "D": "dark red"}


@pytest.mark.parametrize(
    "text, expected",
    [
        # 1. lone letter, either case, wrapped in punctuation
        ("B", "B"),
        ("b", "B"),
        ("(C)", "C"),
        ("**D**", "D"),
        ("A.", "A"),
        ("  d ", "D"),
        # 2. answer phrases
        ("Answer: B", "B"),
        ("The answer is (C).", "C"),
        ("The answer is B, not A.", "B"),
        ("I pick option D", "D"),
        ("The correct choice is A", "A"),
        # 3. MMBench letter match: one distinct upper-case option letter among the tokens
        ("B. dog", "B"),
        ("I choose C because it is red", "C"),
        ("[D] dark red", "D"),
        ("B B B", "B"),
        # 4. option text: exact first, so "dark red" is not blocked by "red" inside it
        ("dark red", "D"),
        ("Dark  Red.", "D"),
        ("a cat", "A"),  # lower-case "a" is not a letter token; "cat" is a unique substring
        ("it is a dog", "B"),
        # nothing or several
        ("", None),
        ("   ", None),
        ("E", None),  # not an option of this question
        ("The answer is E", None),
        ("A or B", None),  # two letters, and no option text either
        ("cat or dog", None),  # two option texts
        ("a dark red cat", None),  # "cat", "red" and "dark red" all occur
        ("I have no idea", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text, OPTIONS) == expected


def test_two_letters_fall_through_to_option_text():
    # MMBench: 0 or 2+ letters -> can_infer_text
    assert extract_choice("A or B? dog", OPTIONS) == "B"


def test_long_answers_are_not_matched_by_text():
    # MMBench's can_infer_text refuses an answer longer than twice the summed option texts (2 * 20 = 40)
    short = "it looks like a dog to me"
    assert extract_choice(short, OPTIONS) == "B"
    long = "after looking at the picture carefully, it looks like a dog to me"
    assert len(long) > 40
    assert extract_choice(long, OPTIONS) is None


def test_letter_a_as_an_article():
    options = {"A": "black dog", "B": "white cat"}
    # more than three tokens, only "A" found, and the text names B: the text wins
    assert extract_choice("A white cat sleeps.", options) == "B"
    # three tokens or fewer: "A" is the letter
    assert extract_choice("A white cat", options) == "A"
    # no option text: "A" stays the letter
    assert extract_choice("A is the right one", options) == "A"


# -- records and CircularEval ----------------------------------------------------------------------------


def _record(prediction, answer, rotation=0, cid="q1", options=None, **extra):
    return {
        "prediction": prediction,
        "answer": answer,
        "options": options or {"A": "x", "B": "y"},
        "circular_id": cid,
        "rotation": rotation,
        **extra,
    }


def test_circular_question_needs_every_rotation_right():
    records = [
        _record("A", "A", 0, "q1"),
        _record("B", "B", 1, "q1"),  # q1: both right
        _record("A", "A", 0, "q2"),
        _record("A", "B", 1, "q2"),  # q2: second rotation wrong
        _record("B", "A", 0, "q3"),
        _record("A", "B", 1, "q3"),  # q3: both wrong
    ]
    metrics, scores = score_records(records)
    assert scores == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["vanilla_accuracy"] == pytest.approx(2 / 3)  # rotation 0 only
    assert (metrics["questions"], metrics["records"], metrics["incomplete"], metrics["unparsed"]) == (3, 6, 0, 0)


def test_without_rotations_every_record_is_a_question():
    records = [_record("A", "A", cid="same"), _record("no idea", "B", cid="same"), _record("B", "B", cid=None)]
    metrics, scores = score_records(records)
    assert scores == [1.0, 0.0, 1.0]
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["vanilla_accuracy"] == pytest.approx(2 / 3)
    assert metrics["unparsed"] == 1
    assert metrics["questions"] == 3
    assert "incomplete" not in metrics


def test_unparsed_counts_records_and_is_wrong():
    records = [_record("A or B", "A", 0), _record("", "B", 1)]
    metrics, scores = score_records(records)
    assert scores == [0.0, 0.0]
    assert metrics["unparsed"] == 2
    assert metrics["accuracy"] == 0.0


def test_incomplete_groups_are_scored_on_what_is_there():
    options = {"A": "a", "B": "b", "C": "c"}
    records = [_record("A", "A", 0, "q1", options), _record("B", "B", 1, "q1", options)]
    metrics, _ = score_records(records)
    assert metrics["accuracy"] == 1.0
    assert metrics["incomplete"] == 1


def test_per_category_uses_the_circular_result():
    records = [
        _record("A", "A", 0, "q1", category="ocr"),
        _record("B", "B", 1, "q1", category="ocr"),
        _record("A", "A", 0, "q2", category="count"),
        _record("A", "B", 1, "q2", category="count"),
        _record("A", "A", 0, "q3", category="ocr"),
        _record("B", "B", 1, "q3", category="ocr"),
    ]
    metrics, _ = score_records(records)
    assert metrics["per_category"] == {"count": 0.0, "ocr": 1.0}


def test_records_may_give_the_answer_as_text_and_options_as_a_list():
    metrics, scores = score_records([{"prediction": "B", "answer": "dog", "options": ["cat", "dog"]}])
    assert scores == [1.0]
    assert metrics["accuracy"] == 1.0


@pytest.mark.parametrize(
    "records, message",
    [
        ([], "no records"),
        (["A"], "record 0: expected a mapping"),
        ([{"answer": "A", "options": ["x"]}], "record 0: missing 'prediction'"),
        ([{"prediction": "A", "answer": "A"}], "record 0: missing 'options'"),
        ([{"prediction": "A", "options": ["x"]}], "record 0: missing 'answer'"),
        ([{"prediction": 1, "answer": "A", "options": ["x"]}], "record 0: 'prediction' must be a string"),
        ([{"prediction": "A", "answer": "C", "options": ["x", "y"]}], "record 0: 'answer' 'C' is neither"),
        ([{"prediction": "A", "answer": "A", "options": "x"}], "record 0: 'options' must be"),
        ([_record("A", "A", 0), _record("A", "A", -1)], "record 1: 'rotation' must be a non-negative integer"),
        ([_record("A", "A", 0), _record("B", "B", 1, cid=None)], "record 1: missing 'circular_id'"),
        ([_record("A", "A", 0), _record("B", "B", 1, cid=["q"])], "record 1: 'circular_id' must be"),
        ([_record("A", "A", 0), _record("B", "B", 1), _record("B", "B", 1)], "record 2: circular_id 'q1' rotation 1"),
    ],
)
def test_bad_records(records, message):
    with pytest.raises(ValueError, match=message):
        score_records(records)


# -- the evaluator ---------------------------------------------------------------------------------------

SAMPLE: dict[str, Any] = {
    "id": "mmb-17",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>\nWhat animal is this?"},
        {"role": "assistant", "content": "B"},
    ],
    "images": ["pet.png"],
    "options": {"A": "cat", "B": "dog", "C": "bird", "D": "fish"},
    "answer": "B",
    "category": "recognition",
}


def test_prompt_renders_the_options(tiny):
    sample = copy.deepcopy(SAMPLE)
    prompt = _evaluator(tiny).prompt(sample)
    assert prompt == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": "<image>\nWhat animal is this?\nA. cat\nB. dog\nC. bird\nD. fish\n"
            "Answer with the option's letter from the given choices directly.",
        },
    ]
    assert sample == SAMPLE
    bare = _evaluator(tiny, instruction="").prompt({**SAMPLE, "options": ["cat", "dog"]})
    assert bare[-1]["content"] == "<image>\nWhat animal is this?\nA. cat\nB. dog"


def test_prompt_needs_options(tiny):
    with pytest.raises(DataError, match="no 'options'"):
        _evaluator(tiny).prompt({k: v for k, v in SAMPLE.items() if k != "options"})


def test_variants_not_circular_is_the_sample_itself(tiny):
    assert _evaluator(tiny, circular=False).variants(SAMPLE)[0] is SAMPLE
    assert len(_evaluator(tiny, circular=False).variants(SAMPLE)) == 1


def test_variants_rotate_options_and_answer(tiny):
    ev = _evaluator(tiny)
    variants = ev.variants(SAMPLE)
    assert [v["rotation"] for v in variants] == [0, 1, 2, 3]
    assert {v["circular_id"] for v in variants} == {"mmb-17"}
    assert [list(v["options"].values()) for v in variants] == [
        ["cat", "dog", "bird", "fish"],
        ["dog", "bird", "fish", "cat"],
        ["bird", "fish", "cat", "dog"],
        ["fish", "cat", "dog", "bird"],
    ]
    assert [v["answer"] for v in variants] == ["B", "A", "D", "C"]  # always "dog"
    assert all(v["options"][v["answer"]] == "dog" for v in variants)
    assert [ev.prompt(v)[-1]["content"].splitlines()[2] for v in variants] == ["A. cat", "A. dog", "A. bird", "A. fish"]
    assert SAMPLE["options"] == {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}  # not modified


def test_variants_accept_text_answers_and_list_options(tiny):
    variants = _evaluator(tiny).variants({**SAMPLE, "options": ["cat", "dog", "bird"], "answer": "bird"})
    assert [v["answer"] for v in variants] == ["C", "B", "A"]


def test_circular_id_without_id_is_a_content_key(tiny):
    ev = _evaluator(tiny)
    sample = {k: v for k, v in SAMPLE.items() if k != "id"}
    keys = {v["circular_id"] for v in ev.variants(sample)}
    assert len(keys) == 1
    key = keys.pop()
    assert isinstance(key, str) and key.startswith("mc-")
    assert {v["circular_id"] for v in ev.variants(copy.deepcopy(sample))} == {key}  # same content, same key
    other = {v["circular_id"] for v in ev.variants({**sample, "images": ["other.png"]})}
    assert other != {key}
    assert ev.references(sample)["circular_id"] == key


def test_pre_rotated_samples_are_asked_as_they_are(tiny):
    ev = _evaluator(tiny)
    pre = {**SAMPLE, "circular_id": "g1", "rotation": 2}
    assert ev.variants(pre) == [pre]
    assert ev.references(pre)["rotation"] == 2
    with pytest.raises(DataError, match="needs the 'circular_id'"):
        ev.references({**SAMPLE, "rotation": 1})


def test_references(tiny):
    ev = _evaluator(tiny)
    assert ev.primary_metric == "accuracy"
    assert ev.references(SAMPLE) == {
        "answer": "B",
        "options": {"A": "cat", "B": "dog", "C": "bird", "D": "fish"},
        "circular_id": "mmb-17",
        "rotation": 0,
        "category": "recognition",
    }
    no_answer = {k: v for k, v in SAMPLE.items() if k != "answer"}
    assert ev.references(no_answer)["answer"] == "B"  # from the last assistant turn
    with pytest.raises(DataError, match="neither an option letter"):
        ev.references({**SAMPLE, "answer": "whale"})


def test_end_to_end_circular(tiny):
    ev = _evaluator(tiny)
    samples = [SAMPLE, {**SAMPLE, "id": "mmb-18", "answer": "A", "category": "other"}]
    records = []
    for sample in samples:
        for v in ev.variants(sample):
            # the model always answers "dog": right for mmb-17 in every rotation, wrong for mmb-18
            letter = next(k for k, t in v["options"].items() if t == "dog")
            records.append({"prediction": ev.parse(f" The answer is {letter}. "), **ev.references(v)})
    metrics, scores = ev.score(records)
    assert scores == [1.0] * 4 + [0.0] * 4
    assert metrics["accuracy"] == 0.5
    assert metrics["vanilla_accuracy"] == 0.5
    assert metrics["questions"] == 2 and metrics["records"] == 8
    assert metrics["per_category"] == {"other": 0.0, "recognition": 1.0}


def test_end_to_end_circular_catches_a_position_bias(tiny):
    ev = _evaluator(tiny)
    records = [{"prediction": "B", **ev.references(v)} for v in ev.variants(SAMPLE)]  # always "B"
    metrics, scores = ev.score(records)
    assert scores == [1.0, 0.0, 0.0, 0.0]
    assert metrics["vanilla_accuracy"] == 1.0
    assert metrics["accuracy"] == 0.0
