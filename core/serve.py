"""An OpenAI-compatible HTTP server for a saved model (what ``vlmplug serve`` runs).

:func:`create_app` builds a FastAPI app around a :class:`~vlmplug.train.predict.Predictor`:

* ``GET /v1/models`` (and ``/v1/models/{id}``): the one model, named after its run directory (or
  ``model_name``); ``GET /health`` answers without a key, for readiness probes;
* ``POST /v1/chat/completions``: ``messages`` with string content or a list of ``text`` and
  ``image_url`` parts (``data:`` URLs; ``http(s)`` URLs only with ``allow_remote_images``),
  ``temperature``, ``top_p``, ``max_tokens`` / ``max_completion_tokens``, ``stop``, ``seed``, ``n``
  (1 only) and ``stream`` (server-sent ``chat.completion.chunk`` events, then ``data: [DONE]``).

Where the images go: the parts of a message are joined with newlines, and each image part becomes the
model's image placeholder (``<image>``) at its place. A message whose text already holds exactly one
placeholder per image part keeps its text as it is (the images fill the placeholders in order); any
other mix of placeholders and image parts is a 400 naming both counts.

Every error is an OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``: 400 for a
malformed or invalid request (never FastAPI's 422), 401 for a missing or wrong API key, 404 for an
unknown model, 413 for an image or body over the limits; a bad conversation (placeholder count,
undecodable image, over-long prompt) is the Predictor's DataError as a 400.

Generation runs on one thread of its own, one request at a time in arrival order (reading images
and tokenizing run in worker threads), so the event loop stays free: ``/v1/models`` answers while a
request generates, and concurrent requests queue. One generation thread also means one OpenMP thread
team on CPU (several teams spin-waiting against each other stall CPU inference by hundreds of ms).
:func:`serve` runs the app with uvicorn; :class:`BackgroundServer` runs it in a thread (tests, bench).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ._version import __version__
from .errors import ConfigError, DataError

if TYPE_CHECKING:
    from vlmplug.train.predict import Predictor

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_MAX_IMAGE_BYTES",
    "APIError",
    "create_app",
    "serve",
    "is_loopback",
    "exposure_warning",
    "BackgroundServer",
]

log = logging.getLogger("vlmplug.serve")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Largest image a request may carry (decoded bytes of a data URL, or a fetched remote image).
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Largest ``max_tokens`` a request may ask for.
DEFAULT_MAX_TOKENS_LIMIT = 4096
#: Most stop strings in one request.
MAX_STOP_STRINGS = 16
#: Seconds a remote image fetch may take in all (``allow_remote_images``).
DEFAULT_REMOTE_TIMEOUT_S = 10.0
#: Request bodies and data URLs larger than this are parsed in a worker thread, off the event loop.
OFF_LOOP_BYTES = 256 * 1024
#: The Host header names accepted when serving on a loopback address (see :func:`serve`).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


# -- errors ---------------------------------------------------------------------------------------


#: The ``type`` of an error body, by HTTP status (others: ``invalid_request_error``, 5xx ``server_error``).
_ERROR_TYPES = {401: "authentication_error", 404: "not_found_error"}


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list"}


def _validation_error(e: ValidationError) -> APIError:
    """The first problem of a pydantic error as a 400 naming the field (``messages.0.role``)."""
    errors = e.errors()
    first = errors[0]
    # union members show up in the path by type name (``stop.list[str].0``): keep the field names only
    parts = [str(p) for p in first["loc"] if isinstance(p, int) or ("[" not in p and p not in _TYPE_NAMES)]
    param = ".".join(parts) or None
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    where = f"{param}: " if param else ""
    return APIError(400, f"{where}{first['msg']}{more}", param=param, code="invalid_value")


# -- the request ------------------------------------------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Any = None  # a string or a list of parts: checked by _conversation, with precise errors


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of ``POST /v1/chat/completions`` this server reads; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[_Message] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    n: int | None = None
    stream: bool | None = False
    stream_options: _StreamOptions | None = None
    # refused when they ask for something this server does not do
    logprobs: bool | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None


def _check_unsupported(req: ChatRequest) -> None:
    if req.n not in (None, 1):
        raise APIError(400, f"n={req.n}: this server returns one choice per request; n must be 1", param="n")
    if req.logprobs:
        raise APIError(400, "logprobs are not supported by this server", param="logprobs")
    if req.tools or req.functions:
        raise APIError(400, "tool and function calling are not supported by this server", param="tools")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise APIError(400, "response_format: only {'type': 'text'} is supported", param="response_format")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(req, name):
            raise APIError(400, f"{name}: not supported by this server (leave it out or send 0)", param=name)


def _image_url(part: dict[str, Any], param: str) -> str:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise APIError(400, f"{param}.image_url: expected {{'url': 'data:image/...;base64,...'}}", param=param)
    return url


def _conversation(messages: list[_Message], image_token: str) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
    """``(messages as {role, content} strings, [(image url, its param path)] in placeholder order)``."""
    out: list[dict[str, str]] = []
    images: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        where = f"messages.{i}.content"
        if m.content is None or isinstance(m.content, str):
            out.append({"role": role, "content": m.content or ""})
            continue
        if not isinstance(m.content, list):
            raise APIError(400, f"{where}: expected a string or a list of content parts", param=where)
        pieces: list[str | None] = []  # None: an image part
        mine: list[tuple[str, str]] = []
        for j, part in enumerate(m.content):
            here = f"{where}.{j}"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise APIError(400, f"{here}.text: expected a string", param=f"{here}.text")
                pieces.append(text)
            elif kind == "image_url":
                mine.append((_image_url(part, here), f"{here}.image_url.url"))
                pieces.append(None)
            else:
                raise APIError(
                    400,
                    f"{here}: content part type {kind!r} is not supported (use 'text' or 'image_url')",
                    param=f"{here}.type",
                )
        texts = [p for p in pieces if p is not None]
        written = sum(t.count(image_token) for t in texts)
        if mine and written and written != len(mine):
            raise APIError(
                400,
                f"{where}: its text has {written} '{image_token}' placeholder(s) but it has {len(mine)} image "
                f"part(s); leave the placeholders out (each image part stands where it is) or write exactly one "
                f"per image part",
                param=where,
                code="image_count",
            )
        parts = texts if written else [image_token if p is None else p for p in pieces]
        out.append({"role": role, "content": "\n".join(parts)})
        images += mine
    return out, images


# -- images -----------------------------------------------------------------------------------------


def _too_large(param: str, limit: int, size: str) -> APIError:
    return APIError(
        413,
        f"{param}: the image is {size}, over this server's limit of {limit} bytes (--max-image-bytes)",
        param=param,
        code="image_too_large",
    )


def _decode_data_url(url: str, param: str, limit: int) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or ";base64" not in header:
        raise APIError(400, f"{param}: a data URL must be base64: data:image/png;base64,...", param=param)
    payload = "".join(payload.split())
    if len(payload) * 3 // 4 > limit + 2:
        raise _too_large(param, limit, f"about {len(payload) * 3 // 4} bytes")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(400, f"{param}: the data URL is not valid base64 ({e})", param=param) from None
    if len(raw) > limit:
        raise _too_large(param, limit, f"{len(raw)} bytes")
    return raw


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if not newurl.lower().startswith(("http://", "https://")):
            raise urllib.error.URLError(f"redirect to a non-http(s) URL: {newurl[:100]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, param: str, limit: int, timeout: float) -> bytes:
    """GET ``url`` within ``timeout`` seconds in all, at most ``limit`` bytes."""
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(_HttpRedirectsOnly)
    request = urllib.request.Request(url, headers={"User-Agent": f"vlmplug-serve/{__version__}"})
    try:
        with opener.open(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                raise _too_large(param, limit, f"{length} bytes")
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise APIError(400, f"{param}: fetching the image took over {timeout:g} s", param=param)
                chunk = resp.read(min(1 << 16, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise _too_large(param, limit, f"over {limit} bytes")
    except APIError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise APIError(400, f"{param}: could not fetch the image URL: {reason}", param=param) from None
    return b"".join(chunks)


# -- the app ----------------------------------------------------------------------------------------


try:  # what a chat template raises when it refuses a conversation (jinja2 comes with transformers)
    from jinja2 import TemplateError as _TemplateError
except ImportError:  # pragma: no cover

    class _TemplateError(Exception):  # type: ignore[no-redef]
        pass


def _host_name(header: str) -> str:
    """The host part of a Host header (``[::1]:8000`` -> ``::1``, ``localhost:80`` -> ``localhost``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class _Batcher:
    """Non-streamed requests waiting for the generation thread, answered in batches: when the thread
    gets to them, every waiting request with the same decoding settings (and no seed: a seeded sample
    is reproducible only alone) is generated in one left-padded batch of at most ``max_batch``."""

    def __init__(self, predictor: Predictor, generation: ThreadPoolExecutor, max_batch: int):
        self.predictor, self.generation, self.max_batch = predictor, generation, max_batch
        self.waiting: list[tuple[Any, Any, Future]] = []
        self.lock = threading.Lock()
        #: Sizes of the batches generated so far (for tests and the bench).
        self.batches: list[int] = []

    def submit(self, prepared: Any, sampling: Any) -> Future:
        done: Future = Future()
        with self.lock:
            self.waiting.append((prepared, sampling, done))
        self.generation.submit(self._run)  # one turn per request; a turn finds its request taken, or takes it
        return done

    def _take(self) -> list[tuple[Any, Any, Future]]:
        with self.lock:
            if not self.waiting:
                return []
            first = self.waiting[0]
            same = [w for w in self.waiting if w[1] == first[1] and first[1].seed is None] or [first]
            batch = same[: self.max_batch]
            taken = {id(w[2]) for w in batch}
            self.waiting = [w for w in self.waiting if id(w[2]) not in taken]
        return batch

    def _run(self) -> None:
        batch = [w for w in self._take() if w[2].set_running_or_notify_cancel()]
        if not batch:
            return
        self.batches.append(len(batch))
        try:
            answers = self.predictor.complete([p for p, _, _ in batch], batch[0][1])
        except BaseException as e:
            for _, _, done in batch:
                done.set_exception(e)
            return
        for (_, _, done), answer in zip(batch, answers):
            done.set_result(answer)


def create_app(
    predictor: Predictor,
    *,
    api_key: str | None = None,
    allow_remote_images: bool = False,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    model_name: str | None = None,
    max_tokens: int = 256,
    temperature: float = 0.0,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    max_request_bytes: int | None = None,
    remote_timeout_s: float = DEFAULT_REMOTE_TIMEOUT_S,
    trusted_hosts: tuple[str, ...] | list[str] | None = None,
    max_batch_size: int = 8,
) -> FastAPI:
    """The OpenAI-compatible app serving ``predictor`` (see the module docstring).

    :param api_key: when set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
    :param allow_remote_images: fetch ``http(s)`` image URLs (else they are a 400).
    :param max_image_bytes: the largest image (decoded) a request may carry; larger ones are a 413.
    :param max_tokens: ``max_tokens`` when a request gives none; ``temperature`` likewise.
    :param max_tokens_limit: the largest ``max_tokens`` a request may ask for.
    :param max_request_bytes: the largest request body (default: 4 x ``max_image_bytes``, at least 1 MiB).
    :param trusted_hosts: when given, requests whose Host header names another host are refused
        (:func:`serve` passes the loopback names when it binds a loopback address: no DNS rebinding).
    :param max_batch_size: at most this many waiting non-streamed requests with the same decoding
        settings are generated together (1: one at a time).
    """
    from vlmplug.train.predict import Sampling

    if max_image_bytes < 1:
        raise ConfigError(f"max_image_bytes {max_image_bytes}: must be at least 1", header="serve")
    if max_batch_size < 1:
        raise ConfigError(f"max_batch_size {max_batch_size}: must be at least 1", header="serve")
    if max_tokens > max_tokens_limit:
        raise ConfigError(f"max_tokens {max_tokens}: over max_tokens_limit {max_tokens_limit}", header="serve")
    Sampling(max_new_tokens=max_tokens, temperature=temperature)  # the defaults are valid
    name = model_name or predictor.name
    body_limit = max_request_bytes or max(4 * max_image_bytes, 1 << 20)
    created = int(time.time())
    image_token = predictor.encoder.image_token
    prepare_lock = threading.Lock()  # tokenizing (a shared tokenizer) and image decoding: one request at a time
    # every generation runs on this one thread, in arrival order: one OpenMP team (threads of
    # several teams spin-waiting against each other stall CPU inference), and Predictor.stream's
    # predictor.last_completion is read by the thread that streamed
    generation = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmplug-generate")
    batcher = _Batcher(predictor, generation, max_batch_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        generation.shutdown(wait=False, cancel_futures=True)

    trusted = {h.lower().strip("[]") for h in trusted_hosts} if trusted_hosts else None

    app = FastAPI(
        title="vlmplug", version=__version__, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.batcher = batcher

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return APIError(400, f"{param + ': ' if param else ''}{first.get('msg')}", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return APIError(exc.status_code, message).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return APIError(500, f"internal server error: {type(exc).__name__}: {exc}").response()

    def check_request(request: Request) -> None:
        if trusted is not None and _host_name(request.headers.get("host", "")) not in trusted:
            raise APIError(400, "the Host header names a host this server does not answer for", code="bad_host")
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(
                401, "missing API key: send the header 'Authorization: Bearer <key>'", code="missing_api_key"
            )
        if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(401, "incorrect API key", code="invalid_api_key")

    def model_card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "vlmplug"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_request(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        check_request(request)
        if model_id != name:
            raise _unknown_model(model_id, name)
        return model_card()

    async def read_json(request: Request) -> dict[str, Any]:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise APIError(415, f"the request body must be JSON sent as Content-Type: application/json (got {media!r})")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > body_limit:
            raise APIError(413, f"the request body is over this server's limit of {body_limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > body_limit:
                raise APIError(413, f"the request body is over this server's limit of {body_limit} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:  # a large body is parsed off the event loop
            data = await run_in_threadpool(json.loads, raw) if len(raw) > OFF_LOOP_BYTES else json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        return data

    def sampling_of(req: ChatRequest) -> Any:
        new_tokens = req.max_completion_tokens or req.max_tokens or max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        if new_tokens > max_tokens_limit:
            raise APIError(400, f"{param} {new_tokens}: this server's limit is {max_tokens_limit}", param=param)
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > MAX_STOP_STRINGS:
            raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} strings", param="stop")
        try:
            return Sampling(
                max_new_tokens=new_tokens,
                temperature=temperature if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                stop=tuple(s for s in stop if s),
                seed=req.seed,
            )
        except ConfigError as e:
            raise APIError(400, str(e)) from None

    async def load_images(refs: list[tuple[str, str]]) -> list[bytes]:
        out = []
        for url, param in refs:
            if url.startswith("data:"):
                if len(url) > OFF_LOOP_BYTES:
                    out.append(await run_in_threadpool(_decode_data_url, url, param, max_image_bytes))
                else:
                    out.append(_decode_data_url(url, param, max_image_bytes))
            elif url.lower().startswith(("http://", "https://")):
                if not allow_remote_images:
                    raise APIError(
                        400,
                        f"{param}: remote image URLs are refused by this server; send the image inline as a data "
                        f"URL (data:image/png;base64,...), or start the server with --allow-remote-images",
                        param=param,
                        code="remote_image_refused",
                    )
                out.append(await run_in_threadpool(_fetch, url, param, max_image_bytes, remote_timeout_s))
            else:
                raise APIError(
                    400,
                    f"{param}: an image must be a data URL (data:image/png;base64,...)"
                    + (" or an http(s) URL" if allow_remote_images else ""),
                    param=param,
                )
        return out

    def prepare(sample: dict[str, Any]) -> Any:
        try:
            with prepare_lock:
                return predictor.prepare(sample)
        except DataError as e:
            raise APIError(400, str(e), param="messages", code=e.reason) from None
        except _TemplateError as e:  # e.g. a template that refuses system messages
            message = f"the model's chat template refused the conversation: {e}"
            raise APIError(400, message, param="messages", code="chat_template") from None

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        check_request(request)
        data = await read_json(request)
        try:
            req = ChatRequest.model_validate(data)
        except ValidationError as e:
            raise _validation_error(e) from None
        if req.model != name:
            raise _unknown_model(req.model, name)
        _check_unsupported(req)
        sampling = sampling_of(req)
        messages, refs = _conversation(req.messages, image_token)
        images = await load_images(refs)
        sample = {"messages": messages, "images": images, "_where": "the request"}
        prepared = await run_in_threadpool(prepare, sample)
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        stamp = int(time.time())
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            events = _stream_events(predictor, prepared, sampling, generation, ident, stamp, name, usage)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        done = await asyncio.wrap_future(batcher.submit(prepared, sampling))
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": stamp,
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": done.text},
                        "logprobs": None,
                        "finish_reason": done.finish_reason,
                    }
                ],
                "usage": _usage(done),
            }
        )

    return app


def _unknown_model(asked: str, name: str) -> APIError:
    return APIError(
        404,
        f"The model '{asked}' does not exist on this server; it serves one model: '{name}'",
        param="model",
        code="model_not_found",
    )


def _usage(done: Any) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


async def _stream_events(
    predictor: Predictor,
    prepared: Any,
    sampling: Any,
    generation: ThreadPoolExecutor,
    ident: str,
    stamp: int,
    name: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The SSE events of one streamed answer: the role, content deltas, the finish reason, [DONE].

    The generation thread runs :meth:`Predictor.stream` and hands each piece to the event loop, so a
    slow client never holds the model."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def put(item: tuple[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down)
            pass

    def produce() -> None:
        try:
            for piece in predictor.stream(prepared, sampling):
                put(("piece", piece))
            put(("done", predictor.last_completion))
        except BaseException as e:
            put(("error", e))

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": stamp,
            "model": name,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    job = generation.submit(produce)
    try:
        yield _sse(chunk({"role": "assistant", "content": ""}))
        while True:
            kind, value = await queue.get()
            if kind == "piece":
                if value:
                    yield _sse(chunk({"content": value}))
                continue
            if kind == "done":
                yield _sse(chunk({}, value.finish_reason))
                if include_usage:
                    yield _sse({**chunk({}), "choices": [], "usage": _usage(value)})
            else:
                log.error("generation failed while streaming: %s: %s", type(value).__name__, value)
                yield _sse(APIError(500, f"generation failed: {type(value).__name__}: {value}").body())
            yield _sse("[DONE]")
            return
    finally:
        job.cancel()  # still queued: the client left before its turn


# -- running it -------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``127.0.0.0/8``, ``::1``) or ``localhost``."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for serving on a non-loopback ``host`` without an API key (None when safe)."""
    if is_loopback(host) or api_key:
        return None
    return (
        f"warning: serving on {host}, which is not a loopback address, without an API key: anyone who can "
        f"reach this port can use the model. Set --api-key-env VAR (the key read from $VAR), or bind "
        f"--host 127.0.0.1 and tunnel to it"
    )


def serve(
    predictor: Predictor,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    api_key: str | None = None,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Serve ``predictor`` with uvicorn until interrupted; ``options`` go to :func:`create_app`.

    Binding a non-loopback ``host`` without ``api_key`` prints a warning (to stderr). On a loopback
    host, requests must name a loopback host in their Host header (no DNS rebinding)."""
    import uvicorn

    warning = exposure_warning(host, api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if is_loopback(host):
        options.setdefault("trusted_hosts", LOOPBACK_NAMES)
    app = create_app(predictor, api_key=api_key, **options)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


class BackgroundServer:
    """Run an app with uvicorn in a daemon thread on ``host`` and a free port (``port=0``).

    ``with BackgroundServer(app) as server:`` ... ``server.url`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, app: Any, host: str = DEFAULT_HOST, port: int = 0, log_level: str = "warning"):
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.port: int = self.socket.getsockname()[1]
        self.host = host
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
