"""The ``llm-judge`` evaluator against a local OpenAI-compatible stub server: scores parsed from the
replies, retries after HTTP 500 / 429 and timeouts, re-asks and ``unparsed`` counts, the bearer key
from the environment, per-capability means, and the errors raised before any request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from vlmplug.errors import ConfigError
from vlmplug.plugins import _openai_http
from vlmplug.plugins.evaluators import llm_judge as judge_plugin
from vlmplug.plugins.evaluators._llm_judge import (
    DEFAULT_TEMPLATE,
    JudgeError,
    LlmJudgeEvaluator,
    fill_template,
    parse_score,
)
from vlmplug.testing.chat_stub import ChatStub


class Stub(ChatStub):
    """A judge that answers by the record's question (the first cell of the prompt's last table row):
    ``script[question]`` is a list of answers used in turn, each a reply text, ``(status, headers,
    body)`` or ``("sleep", seconds, text)``; then ``default``."""

    def __init__(self) -> None:
        self.script: dict[str, list[Any]] = {}
        self.default = "0.5"
        super().__init__(self._answer)

    def _answer(self, request: dict[str, Any]) -> Any:
        prompt = request["body"]["messages"][0]["content"]
        row = [line for line in prompt.splitlines() if " | " in line][-1]
        request["q"] = question = row.split(" | ")[0]
        with self.lock:
            scripted = self.script.get(question)
            answer = scripted.pop(0) if scripted else self.default
        if isinstance(answer, tuple) and answer[0] == "sleep":
            time.sleep(answer[1])
            answer = answer[2]
        return answer

    def asked(self) -> list[str]:
        return [r["q"] for r in self.requests]


@pytest.fixture
def stub() -> Iterator[Stub]:
    with Stub() as server:
        yield server


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(_openai_http, "_sleep", waited.append)
    return waited


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def _judge(tiny: Any, stub: Stub | None = None, **options: Any) -> LlmJudgeEvaluator:
    if stub is not None:
        options = {"base_url": stub.url, "model": "judge-1", **options}
    ev = tiny.build(judge_plugin.SPEC, tiny.make_ctx(), options)
    assert isinstance(ev, LlmJudgeEvaluator)
    return ev


def _record(q: str, prediction: str = "pred", answer: Any = "gt", **extra: Any) -> dict[str, Any]:
    return {"prediction": prediction, "question": q, "answer": answer, **extra}


# -- parsing and the prompt --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, score",
    [
        ("0.5", 0.5),
        ("1", 1.0),
        ("0", 0.0),
        ("Score: 0.8", 0.8),
        ("Correctness: 1.0.", 1.0),
        ("80%", 0.8),
        ("I'd give it 70 %", 0.7),
        ("7 out of 10, so 0.7", 0.7),  # the first number IN [0, 1]
        ("gpt4 says 0.3", 0.3),  # digits inside words are not numbers
        ("-0.5 or 0.25", 0.25),
        ("nan", None),
        ("great answer", None),
        ("1.5", None),
        ("", None),
    ],
)
def test_parse_first_number(reply, score):
    assert parse_score(reply) == score


@pytest.mark.parametrize(
    "reply, score",
    [
        ("0.5", 0.5),
        ("1", 1.0),
        ("0.8\n", 0.8),
        ("0.8 because", 0.8),
        ("Score: 0.8", None),
        ("1.5", None),
        ("80%", None),
    ],
)
def test_parse_like_mmvet(reply, score):
    # MM-Vet's script: the first space-separated word as a float, kept only in [0, 1]
    assert parse_score(reply, "mmvet") == score


def test_fill_template_replaces_each_placeholder_once():
    assert fill_template("{question}|{answer}|{prediction}|{other}", "{answer}", "A", "P") == "{answer}|A|P|{other}"
    assert DEFAULT_TEMPLATE.endswith("{question} | {answer} | {prediction} | ")


def test_prompt_and_references(tiny, stub):
    ev = _judge(tiny, stub)
    assert judge_plugin.SPEC.name == "llm-judge" and ev.primary_metric == "score"
    sample: dict[str, Any] = {
        "messages": [
            {"role": "user", "content": "<image>\nWhat is x in the equation?"},
            {"role": "assistant", "content": "-1 <AND> -5"},
        ],
        "images": ["a.png"],
    }
    assert ev.prompt(sample) == sample["messages"][:1]
    assert ev.references(sample) == {"question": "What is x in the equation?", "answer": "-1 <AND> -5"}
    mmvet = {**sample, "question": "What is x?", "answer": "-1<AND>-5", "capability": ["math", "ocr"]}
    assert ev.references(mmvet) == {"question": "What is x?", "answer": "-1<AND>-5", "capability": ["math", "ocr"]}
    vqa = {**sample, "answers": ["two", "2", "two"], "category": "count"}
    assert ev.references(vqa) == {"question": "What is x in the equation?", "answer": "two <OR> 2", "category": "count"}
    assert ev.parse("  A long\nanswer. ") == "A long\nanswer."


# -- scoring against the stub ----------------------------------------------------------------------------


def test_scores_parsed_and_per_capability_means(tiny, stub, delays):
    stub.script = {"q1": ["0.5"], "q2": ["Score: 0.8"], "q3": ["1"], "q4": ["20%"]}
    records = [
        _record("q1", answer="-1<AND>-5", capability=["rec", "ocr"]),
        _record("q2", capability=["rec"]),
        _record("q3", capability=["ocr", "rec"]),
        _record("q4", capability=["math"]),
    ]
    metrics, scores = _judge(tiny, stub).score(records)
    assert scores == pytest.approx([0.5, 0.8, 1.0, 0.2])
    assert metrics["score"] == pytest.approx(2.5 / 4)
    assert metrics["count"] == 4 and metrics["unparsed"] == 0 and metrics["requests"] == 4
    assert metrics["per_capability"] == pytest.approx({"math": 0.2, "ocr": 0.75, "rec": 2.3 / 3})
    assert metrics["per_capability_set"] == pytest.approx({"math": 0.2, "ocr_rec": 0.75, "rec": 0.8})
    assert delays == []
    first = next(r for r in stub.requests if r["q"] == "q1")
    assert first["path"] == "/v1/chat/completions" and first["auth"] is None  # no key in the environment
    body = first["body"]
    assert body["model"] == "judge-1" and body["temperature"] == 0.0 and body["max_tokens"] == 3
    assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
    # MM-Vet writes the ground truth with spaces around <AND> / <OR>
    assert body["messages"][0]["content"].endswith("\nq1 | -1 <AND> -5 | pred | ")


def test_category_means_and_json_metrics(tiny, stub):
    stub.script = {"a": ["1.0"], "b": ["0.0"], "c": ["0.5"]}
    records = [_record("a", category="count"), _record("b", category="count"), _record("c", category="color")]
    metrics, _ = _judge(tiny, stub).score(records)
    assert metrics["per_capability"] == {"color": 0.5, "count": 0.5}
    assert "per_capability_set" not in metrics
    json.dumps(metrics)


def test_api_key_sent_as_bearer_token_from_the_named_variable(tiny, stub, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    _judge(tiny, stub, api_key_env="JUDGE_KEY").score([_record("q")])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-default")
    _judge(tiny, stub).score([_record("q")])
    _judge(tiny, stub, api_key_env="").score([_record("q")])
    assert [r["auth"] for r in stub.requests] == ["Bearer sk-test", "Bearer sk-default", None]


def test_retries_after_500_and_429(tiny, stub, delays):
    stub.script = {
        "q1": [(500, {}, b"busy"), "0.7"],
        "q2": [(429, {"Retry-After": "3"}, b"slow down"), "0.9"],
    }
    metrics, scores = _judge(tiny, stub, concurrency=1).score([_record("q1"), _record("q2")])
    assert scores == pytest.approx([0.7, 0.9])
    assert metrics["requests"] == 4 and metrics["unparsed"] == 0
    assert stub.asked() == ["q1", "q1", "q2", "q2"]
    assert 0.5 <= delays[0] <= 1.0 and delays[1] == 3.0  # jittered first backoff; Retry-After honoured


def test_timeout_is_retried(tiny, stub, delays):
    stub.script = {"slow": [("sleep", 1.0, "0.1"), "0.6"]}
    metrics, scores = _judge(tiny, stub, timeout=0.2).score([_record("slow")])
    assert scores == [0.6] and metrics["requests"] == 2
    assert len(delays) == 1


def test_unparseable_replies_are_asked_again_then_counted(tiny, stub, delays, caplog):
    stub.script = {"bad": ["Looks right to me.", "", "Definitely correct!"], "fine": ["Maybe.", "0.4"]}
    ev = _judge(tiny, stub, retries=2, concurrency=1)
    metrics, scores = ev.score([_record("bad"), _record("fine")])
    assert scores == [0.0, 0.4]
    assert metrics["unparsed"] == 1 and metrics["requests"] == 5 and metrics["score"] == pytest.approx(0.2)
    bad = [r["body"] for r in stub.requests if r["q"] == "bad"]
    assert [b["temperature"] for b in bad] == [0.0, 0.5, 1.0]  # raised at each re-ask
    first, again = bad[0]["messages"][0]["content"], bad[1]["messages"][0]["content"]
    assert again == first + judge_plugin.LlmJudgeConfig().retry_suffix
    assert "1 of 2 replies had no score" in caplog.text and "Definitely correct!" in caplog.text
    assert delays == []  # re-asks are not backoffs


def test_temperature_stops_at_two(tiny, stub):
    stub.script = {"q": ["no", "no", "no", "no", "no", "no"]}
    _judge(tiny, stub, retries=5, retry_temperature_step=0.5).score([_record("q")])
    assert [r["body"]["temperature"] for r in stub.requests] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]


def test_mmvet_parse_and_max_tokens_option(tiny, stub):
    stub.script = {"q": ["Score: 0.8", "0.8"]}
    metrics, scores = _judge(tiny, stub, parse="mmvet", max_tokens=0, retries=1).score([_record("q")])
    assert scores == [0.8] and metrics["requests"] == 2
    assert all("max_tokens" not in r["body"] for r in stub.requests)


def test_concurrent_requests_keep_the_record_order(tiny, stub):
    stub.script = {f"q{i}": [("sleep", 0.05 * (6 - i), f"0.{i}")] for i in range(6)}
    _, scores = _judge(tiny, stub, concurrency=3).score([_record(f"q{i}") for i in range(6)])
    assert scores == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert sorted(stub.asked()) == [f"q{i}" for i in range(6)]


def test_failed_requests_stop_the_scoring(tiny, stub, delays):
    stub.script = {"down": [(503, {}, b"down")] * 2}
    with pytest.raises(JudgeError, match=r"record 0: the judge at .* gave no answer: gave up after 2 attempt\(s\)"):
        _judge(tiny, stub, retries=1).score([_record("down")])
    stub.script = {"key": [(401, {}, b'{"error": "bad key"}')]}
    with pytest.raises(JudgeError, match=r"HTTP 401.*check the API key \(api_key_env names"):
        _judge(tiny, stub).score([_record("key")])
    stub.script = {"odd": [(200, {}, b'{"not": "a completion"}')]}
    with pytest.raises(JudgeError, match="not a chat-completions response"):
        _judge(tiny, stub).score([_record("odd")])


# -- errors before any request ---------------------------------------------------------------------------


def test_missing_base_url_and_model_are_config_errors(tiny):
    with pytest.raises(ConfigError) as excinfo:
        _judge(tiny)
    message = str(excinfo.value)
    assert "llm-judge is not configured" in message
    assert "base_url is not set" in message and "model is not set" in message
    with pytest.raises(ConfigError, match=r"not an http\(s\) URL"):
        _judge(tiny, base_url="127.0.0.1:8000/v1", model="m")
    with pytest.raises(ConfigError, match="NO_SUCH_JUDGE_KEY: that environment variable is not set"):
        _judge(tiny, base_url="http://127.0.0.1:9/v1", model="m", api_key_env="NO_SUCH_JUDGE_KEY")
    with pytest.raises(ConfigError, match=r"prompt_template has no \{answer\}"):
        _judge(tiny, base_url="http://127.0.0.1:9/v1", model="m", prompt_template="Grade {prediction}")


@pytest.mark.parametrize(
    "record, message",
    [
        ({"question": "q", "answer": "a"}, "record 1: missing 'prediction'"),
        ({"prediction": "p", "answer": "a"}, "record 1: missing 'question'"),
        ({"prediction": "p", "question": "q"}, "record 1: missing 'answer'"),
        ({"prediction": 3, "question": "q", "answer": "a"}, "record 1: 'prediction' must be a string"),
        ({"prediction": "p", "question": "q", "answers": []}, "record 1: 'answers' is empty"),
        ({"prediction": "p", "question": "q", "answer": 5}, "record 1: 'answer' must be a string or a list"),
        ({"prediction": "p", "question": "q", "answer": "a", "capability": 3}, "record 1: 'capability' must be"),
        ("text", "record 1: expected an object"),
    ],
)
def test_bad_records_are_reported_before_any_request(tiny, stub, record, message):
    with pytest.raises(ValueError) as excinfo:
        _judge(tiny, stub).score([_record("ok"), record])
    assert str(excinfo.value).startswith(message)
    assert stub.requests == []


def test_no_records(tiny, stub):
    with pytest.raises(ValueError, match="no records"):
        _judge(tiny, stub).score([])
