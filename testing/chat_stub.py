"""A local OpenAI-compatible ``/v1/chat/completions`` stub server, for testing code that calls one
(``vlmplug data synth``, the ``llm-judge`` evaluator, a plugin's own client) without a network.

    with ChatStub(lambda request: "1.0") as stub:
        client_under_test(base_url=stub.url)          # http://127.0.0.1:PORT/v1
        assert stub.requests[0]["body"]["model"] == "judge"

``reply(request)`` gets the recorded request (``path``, ``auth``: the Authorization header, ``body``:
the decoded JSON; it may add keys of its own, e.g. what it parsed) and returns the answer: a text
(a 200 chat completion with that message) or ``(status, headers, body bytes)``. It runs in the
server's request thread, outside :attr:`lock`, so it may sleep to simulate a slow endpoint.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ChatStub", "Reply", "completion"]

#: What a reply function returns: a message text, or ``(status, headers, body)``.
Reply = str | tuple[int, dict[str, str], bytes]


def completion(text: str) -> bytes:
    """The body of a chat completion whose one choice says ``text``."""
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


class ChatStub:
    """The server, started on 127.0.0.1 (a free port) in a daemon thread; :attr:`requests` records every
    POST in arrival order."""

    def __init__(self, reply: Callable[[dict[str, Any]], Reply]):
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                request = {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                with stub.lock:
                    stub.requests.append(request)
                answer = reply(request)
                status, headers, payload = (200, {}, completion(answer)) if isinstance(answer, str) else answer
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    if not any(k.lower() == "content-type" for k in headers):
                        self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (a timeout being tested)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        #: The API root to give a client as its base URL.
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> ChatStub:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
