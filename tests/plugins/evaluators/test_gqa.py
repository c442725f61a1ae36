"""The ``gqa`` evaluator: GQA's eval.py accuracy and breakdowns, LLaVA's parsing, hand-computed."""

from __future__ import annotations

from typing import Any

import pytest

from vlmplug.plugins.evaluators import gqa as gqa_plugin
from vlmplug.plugins.evaluators._gqa import GqaEvaluator, gqa_accuracy, llava_postprocess, score_records

SAMPLE: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": "<image>\nIs the man to the left of the car?"},
        {"role": "assistant", "content": "yes"},
    ],
    "images": ["n1.jpg"],
}


def _evaluator(tiny, **options) -> GqaEvaluator:
    ev = tiny.build(gqa_plugin.SPEC, tiny.make_ctx(), options)
    assert isinstance(ev, GqaEvaluator)
    return ev


def _types(structural: str, semantic: str, detailed: str) -> dict[str, str]:
    return {"structural": structural, "semantic": semantic, "detailed": detailed}


# -- parsing: LLaVA's convert_gqa_for_eval -------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes.", "yes"),  # trailing period off, lower-cased
        ("  The Man  ", "the man"),  # stripped; articles stay
        ("Left.\nThe man stands on the left.", "left"),  # first line
        ("etc..", "etc"),  # every trailing period
        ("yes .", "yes "),  # nothing else: the space stays
        ("3.5", "3.5"),
        ("", ""),
    ],
)
def test_parse(tiny, text, expected):
    assert _evaluator(tiny).parse(text) == expected


def test_llava_postprocess():
    assert llava_postprocess("Yes...") == "yes"
    assert llava_postprocess(" No. ") == " no. "  # rstrip('.') only; stripping is the generator's


# -- scoring: eval.py's exact match --------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, answer, expected",
    [
        ("yes", "yes", 1.0),
        ("Yes", "yes", 0.0),  # raw comparison: case matters
        ("yes ", "yes", 0.0),  # ... and whitespace
        ("the man", "man", 0.0),  # ... and articles
        ("yes.", "yes", 0.0),
    ],
)
def test_official_exact_match(prediction, answer, expected):
    assert gqa_accuracy(prediction, answer) == expected


@pytest.mark.parametrize(
    "prediction, answer, expected",
    [
        ("The Man.", "man", 1.0),
        (" yes ", "yes", 1.0),
        ("Two", "2", 1.0),
        ("t-shirt", "T shirt", 1.0),
        ("men", "man", 0.0),
    ],
)
def test_lenient_match(prediction, answer, expected):
    assert gqa_accuracy(prediction, answer, lenient=True) == expected


def test_score_records_breakdowns():
    records = [
        {"prediction": "yes", "answer": "yes", "types": _types("verify", "rel", "relVerify")},  # 1
        {"prediction": "no", "answer": "yes", "types": _types("verify", "attr", "verifyAttr")},  # 0
        {"prediction": "red", "answer": "red", "types": _types("query", "attr", "colorQuery")},  # 1
        {"prediction": "car", "answer": "truck", "types": _types("query", "obj", "objQuery")},  # 0
        {"prediction": "left", "answer": "left", "types": _types("choose", "rel", "relChooser")},  # 1
        {"prediction": "cat", "answer": "cat"},  # 1, no types: overall only
    ]
    metrics, scores = score_records(records)
    assert scores == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["count"] == 6
    # open = structural "query"; binary = every other structural type (verify, choose, ...)
    assert metrics["open"] == pytest.approx(1 / 2)
    assert metrics["binary"] == pytest.approx(2 / 3)
    assert metrics["per_structural"] == pytest.approx({"choose": 1.0, "query": 0.5, "verify": 0.5})
    assert metrics["per_semantic"] == pytest.approx({"attr": 0.5, "obj": 0.0, "rel": 1.0})
    assert metrics["per_detailed"] == pytest.approx(
        {"colorQuery": 1.0, "objQuery": 0.0, "relChooser": 1.0, "relVerify": 1.0, "verifyAttr": 0.0}
    )


def test_score_records_without_types_reports_only_accuracy():
    metrics, _ = score_records([{"prediction": "a", "answer": "a"}, {"prediction": "a", "answer": "b"}])
    assert metrics == {"accuracy": 0.5, "count": 2}
    # a partial types object gives only the groups it has
    metrics, _ = score_records([{"prediction": "a", "answer": "a", "types": {"semantic": "obj"}}])
    assert metrics == {"accuracy": 1.0, "count": 1, "per_semantic": {"obj": 1.0}}


def test_reference_fields():
    records = [
        {"prediction": "yes", "answer": "yes", "answers": ["no"]},  # answer wins
        {"prediction": "yes", "answers": ["yes", "no"]},  # else the first of answers
        {"prediction": "yes", "answers": [{"answer": "yes"}]},
        {"prediction": "yes", "answers": "yes"},
    ]
    assert score_records(records)[1] == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"answer": "x"}, "record 1: missing 'prediction'"),
        ({"prediction": "x"}, "record 1: missing 'answer'"),
        ({"prediction": None, "answer": "x"}, "record 1: 'prediction' must be a string"),
        ({"prediction": "x", "answer": 3}, "record 1: 'answer' must be a string"),
        ({"prediction": "x", "answers": []}, "record 1: 'answers' must be a non-empty list"),
        ({"prediction": "x", "answers": [{"text": "x"}]}, "record 1: 'answers'[0] must be a string"),
        ({"prediction": "x", "answer": "x", "types": "query"}, "record 1: 'types' must be an object"),
        ({"prediction": "x", "answer": "x", "types": {"structural": 1}}, "record 1: 'types'.structural must be"),
        (["x"], "record 1: expected an object"),
    ],
)
def test_score_names_the_bad_record(record, message):
    with pytest.raises(ValueError) as excinfo:
        score_records([{"prediction": "x", "answer": "x"}, record])
    assert str(excinfo.value).startswith(message)


def test_score_rejects_no_records():
    with pytest.raises(ValueError, match="no records"):
        score_records([])


# -- the evaluator -------------------------------------------------------------------------------


def test_prompt_suffix(tiny):
    ev = _evaluator(tiny, prompt_suffix="Answer the question using a single word or phrase.")
    assert ev.primary_metric == "accuracy"
    assert ev.prompt(SAMPLE) == [
        {
            "role": "user",
            "content": "<image>\nIs the man to the left of the car?\n"
            "Answer the question using a single word or phrase.",
        }
    ]


def test_references(tiny):
    ev = _evaluator(tiny)
    gqa_types = {**_types("verify", "rel", "relVerify"), "extra": 1}
    assert ev.references({**SAMPLE, "answer": "yes", "types": gqa_types}) == {
        "answer": "yes",
        "types": _types("verify", "rel", "relVerify"),
    }
    # the vqa-data format keeps GQA's detailed type as question_type, its structural as answer_type
    vqa_data = {**SAMPLE, "answers": ["yes"], "question_type": "relVerify", "answer_type": "verify"}
    assert ev.references(vqa_data) == {"answer": "yes", "types": {"detailed": "relVerify", "structural": "verify"}}
    # an answer_type that is not a GQA structural type is not taken for one
    assert ev.references({**SAMPLE, "answers": [{"answer": "no"}], "answer_type": "yes/no"}) == {"answer": "no"}
    assert ev.references(SAMPLE) == {"answer": "yes"}  # the last assistant turn


def test_score_uses_the_lenient_option(tiny):
    records = [{"prediction": "the man", "answer": "man"}]
    assert _evaluator(tiny).score(records)[1] == [0.0]
    assert _evaluator(tiny, lenient=True).score(records)[1] == [1.0]


def test_generation_path_matches_llava(tiny):
    ev = _evaluator(tiny)
    record = {"prediction": ev.parse("Yes."), **ev.references({**SAMPLE, "answer": "yes"})}
    assert ev.score([record])[0]["accuracy"] == 1.0


def test_answer_prior_baseline(tiny):
    def sample(answer: str, detailed: str) -> dict[str, Any]:
        return {**SAMPLE, "answer": answer, "types": {"detailed": detailed}}

    train = [sample("yes", "relVerify")] * 3 + [sample("no", "relVerify"), sample("red", "colorQuery")]
    train += [sample("white", "colorQuery")] * 2
    records = [
        {"answer": "yes", "types": {"detailed": "relVerify"}},  # prior of relVerify "yes": 1
        {"answer": "red", "types": {"detailed": "colorQuery"}},  # prior of colorQuery "white": 0
        {"answer": "yes", "types": {"detailed": "existOr"}},  # unseen type: overall prior "yes": 1
        {"answer": "white"},  # no type: overall prior "yes": 0
    ]
    baseline = _evaluator(tiny).baselines(train, records)["answer_prior"]
    assert baseline["accuracy"] == pytest.approx(2 / 4)
    assert baseline["per_detailed"] == {"colorQuery": 0.0, "existOr": 1.0, "relVerify": 1.0}
    assert _evaluator(tiny).baselines([], records) == {}
