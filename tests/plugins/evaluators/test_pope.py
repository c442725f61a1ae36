"""The ``pope`` evaluator: the official yes/no reading of answers and the POPE metrics, hand-computed."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest

from vlmplug.errors import DataError
from vlmplug.plugins.evaluators import pope as pope_plugin
from vlmplug.plugins.evaluators._pope import PopeEvaluator, confusion_metrics, pope_answer, score_records


def _evaluator(tiny, **options) -> PopeEvaluator:
    ev = tiny.build(pope_plugin.SPEC, tiny.make_ctx(), options)
    assert isinstance(ev, PopeEvaluator)
    return ev


# -- the official answer reading -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no", "no"),
        ("Yes, there is a dog in the image.", "yes"),
        ("I do not see a dog.", "no"),  # "not" is a negative word
        # first sentence only: what follows the first "." is ignored
        ("Yes. There is no dog.", "yes"),
        ("No. Yes.", "no"),
        (".No", "yes"),  # the first "sentence" is empty
        # commas are deleted, not turned into spaces
        ("No, there is none", "no"),
        ("yes,no", "yes"),  # one word "yesno"
        # words are split on the space character only
        ("No\nthere is no dog", "no"),  # "no" is still a word later on
        ("No\nthere is a dog", "yes"),  # the word is "No\nthere"
        ("No\tdog", "yes"),
        # exact, case-sensitive words
        ("NO", "yes"),
        ("Not really", "yes"),
        ("No!", "yes"),
        ("I cannot see one", "yes"),
        ("There isn't one", "yes"),
        ("nope", "yes"),
        # anything else is "yes"
        ("", "yes"),
        ("maybe", "yes"),
    ],
)
def test_official_answer_reading(text, expected):
    assert pope_answer(text) == expected


# -- metrics ---------------------------------------------------------------------------------------------


def test_metrics_hand_computed():
    records = [
        {"prediction": "Yes", "label": "yes"},  # TP
        {"prediction": "No, there is not.", "label": "yes"},  # FN
        {"prediction": "Yes, there is.", "label": "yes"},  # TP
        {"prediction": "Yes", "label": "no"},  # FP
        {"prediction": "No", "label": "no"},  # TN
    ]
    metrics, scores = score_records(records)
    assert scores == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"], metrics["count"]) == (2, 1, 1, 1, 5)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["yes_ratio"] == pytest.approx(3 / 5)
    assert "per_sampling" not in metrics


def test_f1_with_unequal_precision_and_recall():
    m = confusion_metrics(["yes", "yes", "yes", "no"], ["yes", "no", "no", "yes"])
    # TP 1, FP 2, FN 1: P = 1/3, R = 1/2, F1 = 2 * (1/6) / (5/6) = 0.4
    assert (m["precision"], m["recall"]) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    assert m["f1"] == pytest.approx(0.4)
    assert m["accuracy"] == pytest.approx(1 / 4)
    assert m["yes_ratio"] == pytest.approx(3 / 4)


def test_per_sampling():
    records = [
        {"prediction": "Yes", "label": "yes", "sampling": "random"},
        {"prediction": "No", "label": "no", "sampling": "random"},
        {"prediction": "Yes", "label": "yes", "sampling": "adversarial"},
        {"prediction": "Yes", "label": "no", "sampling": "adversarial"},
        {"prediction": "Yes", "label": "no"},  # no sampling: only in the overall figures
    ]
    metrics, _ = score_records(records)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    per = metrics["per_sampling"]
    assert list(per) == ["adversarial", "random"]
    assert per["random"]["accuracy"] == 1.0
    assert per["random"]["yes_ratio"] == 0.5
    assert per["adversarial"]["accuracy"] == 0.5
    assert per["adversarial"]["precision"] == 0.5
    assert per["adversarial"]["yes_ratio"] == 1.0
    assert per["adversarial"]["count"] == 2


def test_no_yes_predictions_gives_zero_precision_and_f1_with_warnings():
    records = [{"prediction": "No", "label": "yes"}, {"prediction": "No", "label": "no"}]
    with pytest.warns(RuntimeWarning) as caught:
        metrics, _ = score_records(records)
    messages = [str(w.message) for w in caught]
    assert any("precision is undefined" in m for m in messages)
    assert any("f1 is undefined" in m for m in messages)
    assert (metrics["precision"], metrics["recall"], metrics["f1"]) == (0.0, 0.0, 0.0)
    assert metrics["accuracy"] == 0.5
    assert metrics["yes_ratio"] == 0.0


def test_no_yes_labels_gives_zero_recall_with_a_warning_naming_the_sampling():
    records = [{"prediction": "Yes", "label": "no", "sampling": "popular"}]
    with pytest.warns(RuntimeWarning) as caught:
        metrics, _ = score_records(records)
    messages = [str(w.message) for w in caught]
    assert "pope: recall is undefined (no 'yes' labels); reported as 0.0" in messages
    assert "pope: recall is undefined (no 'yes' labels) for sampling 'popular'; reported as 0.0" in messages
    assert metrics["precision"] == 0.0  # defined: 0 / 1
    assert metrics["per_sampling"]["popular"]["recall"] == 0.0
    assert metrics["recall"] == 0.0


def test_defined_metrics_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score_records([{"prediction": "Yes", "label": "yes"}, {"prediction": "No", "label": "no"}])


def test_labels_are_case_insensitive():
    metrics, scores = score_records(
        [
            {"prediction": "Yes", "label": "YES"},
            {"prediction": "No", "label": " No "},
            {"prediction": "no", "label": "Yes"},
        ]
    )
    assert scores == [1.0, 1.0, 0.0]
    assert metrics["fn"] == 1


@pytest.mark.parametrize(
    "records, message",
    [
        ([], "no records"),
        ([None], "record 0: expected a mapping"),
        ([{"label": "yes"}], "record 0: missing 'prediction'"),
        ([{"prediction": "Yes", "label": "yes"}, {"prediction": "Yes"}], "record 1: missing 'label'"),
        ([{"prediction": "Yes", "label": "yes"}, {"prediction": "Yes", "label": "maybe"}], "record 1: 'label' must be"),
        ([{"prediction": "Yes", "label": 1}], "record 0: 'label' must be"),
        ([{"prediction": None, "label": "yes"}], "record 0: 'prediction' must be a string"),
        ([{"prediction": "Yes", "label": "yes", "sampling": 3}], "record 0: 'sampling'"),
    ],
)
def test_bad_records(records, message):
    with pytest.raises(ValueError, match=message):
        score_records(records)


# -- the evaluator ---------------------------------------------------------------------------------------

SAMPLE: dict[str, Any] = {  # a row as `vlmplug data negatives --mode pope` writes it
    "messages": [
        {"role": "user", "content": "<image>\nIs there a dog in the image?"},
        {"role": "assistant", "content": "no"},
    ],
    "images": ["a.jpg"],
    "label": "no",
    "object": "dog",
    "sampling": "adversarial",
    "image_id": "a",
}


def test_prompt_and_suffix(tiny):
    sample = copy.deepcopy(SAMPLE)
    assert _evaluator(tiny).prompt(sample) == [SAMPLE["messages"][0]]
    assert _evaluator(tiny, prompt_suffix="Answer yes or no.").prompt(sample) == [
        {"role": "user", "content": "<image>\nIs there a dog in the image?\nAnswer yes or no."}
    ]
    assert sample == SAMPLE


def test_references(tiny):
    ev = _evaluator(tiny)
    assert ev.primary_metric == "accuracy"
    assert ev.references(SAMPLE) == {"label": "no", "sampling": "adversarial"}
    assert ev.references({**SAMPLE, "label": "Yes", "sampling": None}) == {"label": "yes"}
    no_label = {k: v for k, v in SAMPLE.items() if k != "label"}
    assert ev.references(no_label)["label"] == "no"  # from the last assistant turn
    with pytest.raises(DataError, match="'label' 'yes' or 'no'"):
        ev.references({**SAMPLE, "label": "unsure"})


@pytest.mark.filterwarnings("ignore:pope. .* is undefined:RuntimeWarning")  # one "no" record: P, R, F1 undefined
def test_parse_keeps_the_text_and_score_reads_it(tiny):
    ev = _evaluator(tiny)
    text = "  No, there is no dog. Yes.\n"
    assert ev.parse(text) == "No, there is no dog. Yes."
    records = [{"prediction": ev.parse(text), **ev.references(SAMPLE)}]
    metrics, scores = ev.score(records)
    assert scores == [1.0]
    assert metrics["per_sampling"]["adversarial"]["tn"] == 1


def test_always_yes_baseline(tiny):
    ev = _evaluator(tiny)
    refs = [{"prediction": "", "label": "yes"}, {"prediction": "", "label": "no"}]
    base = ev.baselines([], refs)["always_yes"]
    assert base["accuracy"] == 0.5
    assert base["yes_ratio"] == 1.0
    assert ev.baselines([], []) == {}
