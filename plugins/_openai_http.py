"""A small standard-library client for OpenAI-compatible ``POST .../chat/completions`` endpoints,
shared by ``vlmplug data synth`` (:mod:`vlmplug.plugins.datasets._synth_cli`) and the ``llm-judge``
evaluator (:mod:`vlmplug.plugins.evaluators._llm_judge`).

* :class:`Endpoint` posts a JSON payload with the model's name and, when given, a bearer token. Nothing
  is called but the given URL: redirects are refused and proxy environment variables are not used.
* Connection errors (refused, reset, timed out), HTTP 429 and 5xx raise :class:`Transient`;
  :func:`with_retries` retries them with capped, jittered exponential backoff (:class:`Backoff`,
  ``Retry-After`` honoured). Any other HTTP error, giving up, or a reply that is not a chat completion
  raises :class:`RequestFailed` (``reason`` groups the failures, the message says what to fix).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_CAP_S",
    "RETRY_AFTER_CAP_S",
    "ERROR_BODY_CHARS",
    "Transient",
    "RequestFailed",
    "OPENER",
    "retry_after_seconds",
    "http_hint",
    "Endpoint",
    "Backoff",
    "with_retries",
    "reply_text",
    "chat_completions_url",
]

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 300.0  # a longer Retry-After is cut to this
ERROR_BODY_CHARS = 200


def _sleep(seconds: float) -> None:
    """Wait between attempts (tests replace it to record the delays)."""
    time.sleep(seconds)


class Transient(Exception):
    """A failure worth retrying (connection error, HTTP 429 or 5xx); ``retry_after`` from the server."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RequestFailed(Exception):
    """The request gets no usable answer this time: ``reason`` (``http-404``, ``gave-up``,
    ``malformed-response``, ``empty-reply``, ...) groups the count."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: the 3xx answer comes back as an HTTPError."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


#: Direct connections to the given URL only: no proxies from the environment, no redirects.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) in seconds from now; ``None`` if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def http_hint(code: int, flags: bool = False) -> str:
    """What to check after HTTP ``code``, naming the options as command-line flags (``--base-url``)
    when ``flags``, else as configuration keys (``base_url``)."""
    base_url, api_key_env, model = (
        ("--base-url", "--api-key-env", "--model") if flags else ("base_url", "api_key_env", "model")
    )
    if code in (401, 403):
        return f"; check the API key ({api_key_env} names the environment variable holding it)"
    if code == 404:
        return f"; check {base_url} (the part before /chat/completions, often ending in /v1) and {model}"
    if 300 <= code < 400:
        return f"; redirects are not followed: give the endpoint's final URL as {base_url}"
    return ""


@dataclass(frozen=True)
class Endpoint:
    """``POST {url}`` with the model's name and, when given, a bearer token. ``flags``: error hints
    name command-line flags rather than configuration keys."""

    url: str
    model: str
    api_key: str | None
    timeout: float
    flags: bool = False

    def post(self, payload: dict[str, Any]) -> bytes:
        """The response body; :class:`Transient` for what may pass, :class:`RequestFailed` otherwise."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers=headers, method="POST")
        try:
            with OPENER.open(request, timeout=self.timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace")[:ERROR_BODY_CHARS] if e.fp is not None else ""
            if e.code == 429 or e.code >= 500:
                raise Transient(f"HTTP {e.code}", retry_after_seconds(e.headers.get("Retry-After"))) from None
            raise RequestFailed(f"http-{e.code}", f"HTTP {e.code} {body!r}{http_hint(e.code, self.flags)}") from None
        except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, cut short
            reason = getattr(e, "reason", None) or e
            raise Transient(f"connection error: {type(e).__name__}: {reason}") from None


@dataclass
class Backoff:
    """Exponential backoff, capped, with equal jitter: attempt ``n`` waits between half and all of
    ``min(cap, base * 2**n)``; a server's ``Retry-After`` is waited as given (up to ``RETRY_AFTER_CAP_S``)."""

    base: float = BACKOFF_BASE_S
    cap: float = BACKOFF_CAP_S
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, RETRY_AFTER_CAP_S)
        full = min(self.cap, self.base * 2**attempt)
        return full / 2 + self.rng.uniform(0, full / 2)


def with_retries(
    send: Callable[[], bytes], retries: int, backoff: Backoff, sleep: Callable[[float], None] | None = None
) -> tuple[bytes, int]:
    """``send()``'s result and how many retries it took; after ``retries`` retries of :class:`Transient`
    failures, :class:`RequestFailed` (``gave-up``). ``sleep`` waits between attempts (default: this
    module's ``_sleep``, looked up at each call)."""
    for attempt in range(retries + 1):
        try:
            return send(), attempt
        except Transient as e:
            if attempt == retries:
                raise RequestFailed("gave-up", f"gave up after {retries + 1} attempt(s): {e}") from None
            (sleep or _sleep)(backoff.delay(attempt, e.retry_after))
    raise AssertionError("unreachable")


def reply_text(body: bytes) -> str:
    """The assistant's text in a chat-completions response (content parts joined), stripped."""
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise RequestFailed(
            "malformed-response",
            f"not a chat-completions response (no choices[0].message.content): {body[:ERROR_BODY_CHARS]!r}",
        ) from None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        raise RequestFailed("empty-reply", "the reply has no text")
    return content.strip()


def chat_completions_url(base_url: str) -> str | None:
    """``{base_url}/chat/completions``; ``None`` when ``base_url`` is not an http(s) URL."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return base_url.rstrip("/") + "/chat/completions"
