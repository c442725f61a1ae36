"""``vlmplug serve``: the real server (uvicorn in a thread on a free loopback port) driven by the real
``openai`` client. Its answers equal the Predictor's on the same conversation -- plain, streamed, with
images as data URLs, with stop strings and seeds, under 8 concurrent clients -- and every bad request
is an OpenAI-style error with the right status. The slow test runs lm-eval-harness's
``local-chat-completions`` against it and checks the exact match it reports."""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from vlmplug.serve import LOOPBACK_NAMES, BackgroundServer, create_app, exposure_warning, is_loopback  # noqa: E402
from vlmplug.train.predict import Predictor, Sampling  # noqa: E402

MAX_IMAGE_BYTES = 4096
KEY = "sk-test-key-123"


@pytest.fixture(scope="module")
def predictor(saved_run: Path) -> Predictor:
    return Predictor.load(str(saved_run))


@pytest.fixture(scope="module")
def server(predictor: Predictor) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(predictor, max_image_bytes=MAX_IMAGE_BYTES)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Any:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def png(color: tuple[int, int, int] = (255, 0, 0), size: int = 32, noise: bool = False) -> bytes:
    img = Image.effect_noise((size, size), 100).convert("RGB") if noise else Image.new("RGB", (size, size), color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def image_turn(question: str, raw: bytes) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": data_url(raw)}}, {"type": "text", "text": question}],
    }


def reference(predictor: Predictor, messages: list[dict], images: list | None = None, **sampling: Any) -> Any:
    """What the Predictor answers itself (greedy unless told)."""
    prepared = predictor.prepare({"messages": messages, "images": images or []})
    return predictor.complete([prepared], Sampling(**{"max_new_tokens": 8, **sampling}))[0]


def ask(client: Any, model: str, messages: list[dict], **kwargs: Any) -> Any:
    return client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, **kwargs)


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """A raw POST (urllib): the status and the JSON body, errors included."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def assert_openai_error(body: dict) -> dict:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# -- answers ------------------------------------------------------------------------------------------


def test_models_lists_the_one_model_named_after_the_run(client: Any, saved_run: Path) -> None:
    assert [m.id for m in client.models.list()] == [saved_run.name]
    assert client.models.retrieve(saved_run.name).id == saved_run.name


def test_a_chat_completion_equals_the_predictors_answer(client: Any, predictor: Predictor) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What color is the shape?"}]
    want = reference(predictor, messages)
    got = ask(client, predictor.name, messages)
    assert got.object == "chat.completion" and got.model == predictor.name
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want.text
    assert got.choices[0].finish_reason == want.finish_reason
    assert got.usage.prompt_tokens == want.prompt_tokens
    assert got.usage.completion_tokens == want.completion_tokens
    assert got.usage.total_tokens == want.prompt_tokens + want.completion_tokens


def test_streamed_deltas_add_up_to_the_plain_answer(client: Any, predictor: Predictor) -> None:
    messages = [image_turn("What color is the shape?", png((0, 0, 255)))]
    plain = ask(client, predictor.name, messages)
    chunks = list(ask(client, predictor.name, messages, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks][-1] == plain.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    with_usage = list(ask(client, predictor.name, messages, stream=True, stream_options={"include_usage": True}))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.total_tokens == plain.usage.total_tokens


def test_longer_sampled_streams_match_too(client: Any, predictor: Predictor) -> None:
    messages = [image_turn("Which shape is in the image?", png((0, 255, 0)))]
    kwargs = {"max_tokens": 12, "temperature": 1.5, "seed": 3}
    green = [Image.new("RGB", (32, 32), (0, 255, 0))]
    turn = [{"role": "user", "content": "<image>\nWhich shape is in the image?"}]
    want = reference(predictor, turn, green, max_new_tokens=12, temperature=1.5, seed=3)
    plain = client.chat.completions.create(model=predictor.name, messages=messages, **kwargs)
    streamed = client.chat.completions.create(model=predictor.name, messages=messages, stream=True, **kwargs)
    assert plain.choices[0].message.content == want.text
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == want.text


@pytest.mark.parametrize("color", [(255, 0, 0), (0, 0, 255)])
def test_an_image_as_a_data_url_is_answered_as_the_predictor_answers(
    client: Any, predictor: Predictor, color: tuple[int, int, int]
) -> None:
    question = "What color is the shape?"
    want = reference(
        predictor, [{"role": "user", "content": f"<image>\n{question}"}], [Image.new("RGB", (32, 32), color)]
    )
    got = ask(client, predictor.name, [image_turn(question, png(color))])
    assert got.choices[0].message.content == want.text
    assert got.usage.prompt_tokens == want.prompt_tokens
    # the same image placed by a placeholder written in the text: the same prompt
    placed = {
        "role": "user",
        "content": [
            {"type": "text", "text": f"<image>\n{question}"},
            {"type": "image_url", "image_url": {"url": data_url(png(color))}},
        ],
    }
    assert ask(client, predictor.name, [placed]).choices[0].message.content == want.text


def test_stop_strings_and_max_completion_tokens(client: Any, predictor: Predictor) -> None:
    messages = [{"role": "user", "content": "How many shapes are there?"}]
    for stop in ("\n", ["3", "x"]):
        want = reference(predictor, messages, stop=(stop,) if isinstance(stop, str) else tuple(stop))
        assert ask(client, predictor.name, messages, stop=stop).choices[0].message.content == want.text
    one = client.chat.completions.create(model=predictor.name, messages=messages, max_completion_tokens=1)
    assert one.usage.completion_tokens <= 1


# -- concurrency --------------------------------------------------------------------------------------


def test_eight_concurrent_clients_each_get_their_own_answer(client: Any, predictor: Predictor) -> None:
    questions = ["What color is the shape?", "Which shape is in the image?", "How many shapes are there?"]
    colors = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    jobs = [(questions[i % 3], colors[(i // 3) % 3] if i % 2 else None) for i in range(8)]

    def turn(question: str, color: Any) -> tuple[list[dict], list]:
        if color is None:
            return [{"role": "user", "content": question}], []
        return [{"role": "user", "content": f"<image>\n{question}"}], [Image.new("RGB", (32, 32), color)]

    wants = [reference(predictor, *turn(q, c)).text for q, c in jobs]
    got: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(i: int, question: str, color: Any) -> None:
        try:
            messages = [image_turn(question, png(color))] if color else [{"role": "user", "content": question}]
            got[i] = ask(client, predictor.name, messages).choices[0].message.content
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, q, c)) for i, (q, c) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert [got[i] for i in range(8)] == wants


def test_models_answers_while_a_request_waits_for_the_model(client: Any, predictor: Predictor) -> None:
    messages = [{"role": "user", "content": "How many shapes are there?"}]
    want = reference(predictor, messages).text
    result: dict[str, str] = {}
    with predictor.lock:  # the model is busy: the request queues in a worker thread
        waiting = threading.Thread(
            target=lambda: result.setdefault("text", ask(client, predictor.name, messages).choices[0].message.content)
        )
        waiting.start()
        quick = client.with_options(timeout=5)
        for _ in range(3):
            assert [m.id for m in quick.models.list()] == [predictor.name]
        assert waiting.is_alive()
    waiting.join(60)
    assert result["text"] == want


# -- errors -------------------------------------------------------------------------------------------


def test_an_unknown_model_is_a_404_naming_the_served_one(client: Any, predictor: Predictor) -> None:
    with pytest.raises(openai.NotFoundError, match=predictor.name) as e:
        ask(client, "gpt-4o", [{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_n_other_than_one_is_a_400(client: Any, predictor: Predictor) -> None:
    with pytest.raises(openai.BadRequestError, match="n must be 1") as e:
        ask(client, predictor.name, [{"role": "user", "content": "hi"}], n=2)
    assert e.value.param == "n"


def test_a_remote_image_url_is_refused_by_default(client: Any, predictor: Predictor) -> None:
    turn = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}
    with pytest.raises(openai.BadRequestError, match="--allow-remote-images") as e:
        ask(client, predictor.name, [turn])
    assert "--allow-remote-images" in e.value.message and "data URL" in e.value.message
    assert e.value.code == "remote_image_refused" and e.value.param == "messages.0.content.0.image_url.url"


@pytest.mark.parametrize(
    "url, match",
    [
        (data_url(b"this is not an image"), "cannot read image"),
        ("data:image/png;base64,@@not-base64@@", "not valid base64"),
        ("/etc/passwd", "must be a data URL"),
        ("file:///etc/passwd", "must be a data URL"),
    ],
)
def test_an_unreadable_image_is_a_400(client: Any, predictor: Predictor, url: str, match: str) -> None:
    turn = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}],
    }
    with pytest.raises(openai.BadRequestError, match=match):
        ask(client, predictor.name, [turn])


@pytest.mark.parametrize("size", [128, 320])  # 320 px: a body and a data URL over 256 KiB, parsed off the loop
def test_an_oversized_image_is_a_413_naming_the_limit(client: Any, predictor: Predictor, size: int) -> None:
    big = png(size=size, noise=True)
    assert len(big) > MAX_IMAGE_BYTES
    with pytest.raises(openai.APIStatusError, match=f"limit of {MAX_IMAGE_BYTES} bytes") as e:
        ask(client, predictor.name, [image_turn("What color is the shape?", big)])
    assert e.value.status_code == 413 and e.value.code == "image_too_large"


def test_a_wrong_placeholder_count_is_a_400(client: Any, predictor: Predictor) -> None:
    with pytest.raises(openai.BadRequestError, match=r"1 '<image>' placeholder\(s\) in the text but 0 image"):
        ask(client, predictor.name, [{"role": "user", "content": "<image>\nWhat color is the shape?"}])
    two = {
        "role": "user",
        "content": [
            {"type": "text", "text": "<image> and <image>: which color?"},
            {"type": "image_url", "image_url": {"url": data_url(png())}},
        ],
    }
    with pytest.raises(openai.BadRequestError, match=r"2 '<image>' placeholder\(s\) but it has 1 image part"):
        ask(client, predictor.name, [two])


def test_a_chat_template_that_refuses_the_conversation_is_a_400(
    client: Any, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    strict = (
        "{%- if messages[0]['role'] == 'system' -%}{{ raise_exception('system messages are not supported') }}"
        "{%- endif -%}" + predictor.tokenizer.chat_template
    )
    monkeypatch.setattr(predictor.tokenizer, "chat_template", strict)
    with pytest.raises(openai.BadRequestError, match=r"chat template refused.*system messages are not supported"):
        ask(client, predictor.name, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])


def test_bad_values_are_400s_naming_the_field(client: Any, predictor: Predictor) -> None:
    hi = [{"role": "user", "content": "hi"}]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"logprobs": True}, "logprobs"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=predictor.name, messages=hi, **kwargs)
        assert e.value.param == param, (kwargs, e.value.message)
    with pytest.raises(openai.BadRequestError, match=r"messages\.0\.role"):
        client.chat.completions.create(model=predictor.name, messages=[{"role": "tool", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="'input_audio' is not supported"):
        client.chat.completions.create(
            model=predictor.name, messages=[{"role": "user", "content": [{"type": "input_audio"}]}]
        )


def test_a_malformed_body_is_a_400_with_the_openai_error_shape(server: BackgroundServer, predictor: Predictor) -> None:
    url = f"{server.url}/v1/chat/completions"
    json_header = {"Content-Type": "application/json"}
    status, body = post(url, b'{"model": "x", "messages": [', json_header)
    assert status == 400 and assert_openai_error(body)["code"] == "invalid_json"
    status, body = post(url, json.dumps({"model": predictor.name}).encode(), json_header)
    error = assert_openai_error(body)
    assert status == 400 and error["param"] == "messages" and "Field required" in error["message"]
    hi = [{"role": "user", "content": "hi"}]
    status, body = post(
        url, json.dumps({"model": predictor.name, "messages": hi, "max_tokens": "lots"}).encode(), json_header
    )
    assert status == 400 and assert_openai_error(body)["param"] == "max_tokens"
    status, body = post(url, b"[1, 2]", json_header)
    assert status == 400 and "JSON object" in assert_openai_error(body)["message"]
    status, body = post(
        url, json.dumps({"model": predictor.name, "messages": hi}).encode(), {"Content-Type": "text/plain"}
    )
    assert status == 415 and "application/json" in assert_openai_error(body)["message"]
    status, body = post(f"{server.url}/v1/nothing-here", b"{}", json_header)
    assert status == 404 and assert_openai_error(body)


def test_the_api_key_is_required_when_set(predictor: Predictor) -> None:
    with BackgroundServer(create_app(predictor, api_key=KEY)) as srv:
        hi = [{"role": "user", "content": "hi"}]
        wrong = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
            ask(wrong, predictor.name, hi)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        status, body = post(f"{srv.url}/v1/chat/completions", b"{}", {"Content-Type": "application/json"})
        assert status == 401 and assert_openai_error(body)["code"] == "missing_api_key"
        right = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=KEY, max_retries=0)
        assert ask(right, predictor.name, hi).choices[0].message.content == reference(predictor, hi).text
        with urllib.request.urlopen(f"{srv.url}/health", timeout=10) as resp:  # no key needed
            assert json.loads(resp.read()) == {"status": "ok"}


def test_remote_images_are_fetched_when_allowed_within_the_size_limit(predictor: Predictor) -> None:
    files = {"/red.png": png((255, 0, 0)), "/big.png": png(size=128, noise=True)}

    class Images(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            raw = files.get(self.path)
            self.send_response(200 if raw else 404)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(raw or b"")

        def log_message(self, *args: Any) -> None:
            pass

    images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{images.server_address[1]}"
    app = create_app(predictor, allow_remote_images=True, max_image_bytes=MAX_IMAGE_BYTES)
    try:
        with BackgroundServer(app) as srv:
            c = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)

            def turn(path: str) -> list[dict]:
                url = {"url": base + path}
                parts = [{"type": "image_url", "image_url": url}, {"type": "text", "text": "What color is the shape?"}]
                return [{"role": "user", "content": parts}]

            red = [Image.new("RGB", (32, 32), (255, 0, 0))]
            want = reference(predictor, [{"role": "user", "content": "<image>\nWhat color is the shape?"}], red)
            assert ask(c, predictor.name, turn("/red.png")).choices[0].message.content == want.text
            with pytest.raises(openai.APIStatusError, match=f"limit of {MAX_IMAGE_BYTES} bytes") as e:
                ask(c, predictor.name, turn("/big.png"))
            assert e.value.status_code == 413
            with pytest.raises(openai.BadRequestError, match="could not fetch"):
                ask(c, predictor.name, turn("/missing.png"))
    finally:
        images.shutdown()


def test_a_foreign_host_header_is_refused_on_loopback(predictor: Predictor) -> None:
    with BackgroundServer(create_app(predictor, trusted_hosts=LOOPBACK_NAMES)) as srv:
        body = json.dumps({"model": predictor.name, "messages": [{"role": "user", "content": "hi"}]}).encode()
        headers = {"Content-Type": "application/json"}
        status, _ = post(f"{srv.url}/v1/chat/completions", body, {**headers, "Host": f"localhost:{srv.port}"})
        assert status == 200
        status, error = post(f"{srv.url}/v1/chat/completions", body, {**headers, "Host": "rebound.example.com"})
        assert status == 400 and assert_openai_error(error)["code"] == "bad_host"


# -- the command line: loopback by default ---------------------------------------------------------


def test_loopback_is_the_default_and_exposure_warns() -> None:
    import inspect

    from vlmplug.serve import serve
    from vlmplug.serve_cli import serve as serve_cmd

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert {p.name: p.default for p in serve_cmd.params}["host"] == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("0.0.0.0", KEY) is None
    assert "--api-key-env" in (exposure_warning("0.0.0.0", None) or "")


@pytest.fixture
def uvicorn_runs(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """``uvicorn.run`` replaced by a recorder: the CLI runs to the point of serving."""
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    return calls


def test_the_command_serves_on_loopback_by_default(saved_run: Path, uvicorn_runs: list[dict]) -> None:
    from click.testing import CliRunner

    from vlmplug.serve_cli import serve as serve_cmd

    res = CliRunner().invoke(serve_cmd, [str(saved_run), "--model-name", "tiny"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (uvicorn_runs[0]["host"], uvicorn_runs[0]["port"]) == ("127.0.0.1", 8000)
    assert "warning" not in res.stderr and "serving 'tiny' at http://127.0.0.1:8000/v1" in res.stderr
    with BackgroundServer(uvicorn_runs[0]["app"]) as srv:
        c = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in c.models.list()] == ["tiny"]


def test_the_command_warns_on_an_exposed_host_without_a_key(
    saved_run: Path, uvicorn_runs: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from vlmplug.serve_cli import serve as serve_cmd

    res = CliRunner().invoke(serve_cmd, [str(saved_run), "--host", "0.0.0.0", "--port", "9"], catch_exceptions=False)
    assert res.exit_code == 0 and "not a loopback address, without an API key" in res.stderr
    monkeypatch.setenv("VLMPLUG_TEST_KEY", KEY)
    res = CliRunner().invoke(serve_cmd, [str(saved_run), "--host", "0.0.0.0", "--api-key-env", "VLMPLUG_TEST_KEY"])
    assert res.exit_code == 0 and "warning" not in res.stderr and "API key required" in res.stderr
    with BackgroundServer(uvicorn_runs[-1]["app"]) as srv, pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{srv.url}/v1", api_key="nope", max_retries=0).models.list()


def test_startup_errors_come_before_the_model_loads(saved_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from vlmplug import deps
    from vlmplug.serve_cli import serve as serve_cmd

    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model must not load")

    monkeypatch.setattr(Predictor, "load", no_load)
    monkeypatch.delenv("VLMPLUG_UNSET_KEY", raising=False)
    res = CliRunner().invoke(serve_cmd, [str(saved_run), "--api-key-env", "VLMPLUG_UNSET_KEY"])
    assert res.exit_code == 2 and "VLMPLUG_UNSET_KEY is not set" in " ".join(res.output.split())
    real = deps.is_installed
    monkeypatch.setattr(deps, "is_installed", lambda m: m not in ("fastapi", "uvicorn") and real(m))
    res = CliRunner().invoke(serve_cmd, [str(saved_run)])
    assert res.exit_code == 2 and 'pip install "vlmplug[serve]"' in " ".join(res.output.split())


# -- lm-eval-harness against the live server --------------------------------------------------------------


@pytest.mark.slow
def test_lm_eval_local_chat_completions_reports_the_predictors_exact_match(
    predictor: Predictor, server: BackgroundServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("OPENAI_API_KEY", "unused")  # local-chat-completions sends it as the bearer token
    questions = [
        "What color is the shape?",
        "Which shape is in the image?",
        "How many shapes are there?",
        "Is there a circle?",
        "What is in the picture?",
        "Is the shape red?",
    ]
    answers = [reference(predictor, [{"role": "user", "content": q}], stop=("\n",)).text for q in questions]
    # half the targets are the model's own answer, half are not: the exact match must come out at 0.5
    targets = [a if i % 2 == 0 else f"not {a}" for i, a in enumerate(answers)]
    expected = sum(a == t for a, t in zip(answers, targets)) / len(questions)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": t}) + "\n" for q, t in zip(questions, targets)))
    (tmp_path / "task.yaml").write_text(
        "task: vlmplug_serve_exact\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n  temperature: 0\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    results = lm_eval.simple_evaluate(
        model="local-chat-completions",
        model_args={
            "base_url": f"{server.url}/v1/chat/completions",
            "model": predictor.name,
            "tokenizer_backend": None,
            "max_retries": 1,
        },
        tasks=["vlmplug_serve_exact"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        apply_chat_template=True,
        log_samples=True,
    )
    assert results is not None
    assert results["results"]["vlmplug_serve_exact"]["exact_match,none"] == pytest.approx(expected)
    assert expected == 0.5
    by_doc = {s["doc"]["question"]: s["filtered_resps"][0] for s in results["samples"]["vlmplug_serve_exact"]}
    assert [by_doc[q] for q in questions] == answers


def test_waiting_requests_are_answered_in_one_batch_with_their_own_answers(predictor: Predictor) -> None:
    app = create_app(predictor, max_batch_size=4)
    questions = ["What color is the shape?", "Which shape is in the image?", "How many shapes are there?", "hi", "ok"]
    wants = [reference(predictor, [{"role": "user", "content": q}]).text for q in questions]
    got: dict[int, str] = {}
    with BackgroundServer(app) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=120)

        def work(i: int) -> None:
            got[i] = ask(client, predictor.name, [{"role": "user", "content": questions[i]}]).choices[0].message.content

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(questions))]
        with predictor.lock:  # the model is busy: all five requests wait for it
            for t in threads:
                t.start()
            for _ in range(200):
                if len(app.state.batcher.waiting) + sum(app.state.batcher.batches) >= len(questions) - 1:
                    break
                threading.Event().wait(0.05)
        for t in threads:
            t.join(120)
    assert [got[i] for i in range(len(questions))] == wants
    batches = app.state.batcher.batches
    assert sum(batches) == len(questions) and max(batches) <= 4 and max(batches) > 1
