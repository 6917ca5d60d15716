"""A local stand-in for a 企业微信 (WeCom) group robot's webhook, for tests: a real HTTP server
on a free port of 127.0.0.1, in a thread.

It speaks the robot's protocol: POST /cgi-bin/webhook/send?key=KEY with a JSON body
{"msgtype": "markdown", "markdown": {"content": ...}}; the answer is HTTP 200 with
{"errcode": 0, "errmsg": "ok"}, or a non-zero errcode: 93000 for a wrong key, 40058 for
content over 4096 bytes of UTF-8, 45009 over `rate_limit_per_minute` (when set), 40008 for a
message type it does not take and 44004 for empty content. (Where the real robot's exact code
for a malformed body is not known, the fake answers 40035, an invalid parameter.)

Told to fail the next N requests (`fail_next`): with an HTTP status, with an errcode, or by
hanging for some seconds before answering errcode -1. It records every request it received
(`received`) and the contents it accepted (`accepted`).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PATH = "/cgi-bin/webhook/send"
MAX_CONTENT_BYTES = 4096


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float
    answer: dict[str, Any] | None = None  # what the fake answered (None: an HTTP error or no answer)

    @property
    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@dataclass
class _Failure:
    status: int | None = None
    errcode: int | None = None
    hang: float | None = None


@dataclass
class FakeWeCom:
    key: str = "fake-robot-key-0000"
    port: int = 0
    rate_limit_per_minute: int | None = None
    delay: float = 0.0  # seconds every answer takes (a slow robot that still answers)
    echo_key_in_errors: bool = False  # errmsg repeats the key, to prove it is never logged
    received: list[Received] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._accepted_at: list[float] = []
        self._released = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- control ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}?key={self.key}"

    def fail_next(self, times: int = 1, *, status: int | None = None, errcode: int | None = None,
                  hang: float | None = None) -> None:
        """The next `times` requests fail: HTTP `status`, or errcode `errcode`, or a hang of
        `hang` seconds (then errcode -1; the client has normally given up by then)."""
        assert [status, errcode, hang].count(None) == 2, "one way to fail"
        with self._lock:
            self._failures += [_Failure(status, errcode, hang) for _ in range(times)]

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def contents(self) -> list[str]:
        with self._lock:
            return list(self.accepted)

    def start(self) -> FakeWeCom:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                fake._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                self.send_error(405)

        self._released.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()  # hung requests end now
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeWeCom:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- the robot -------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        parts = urlsplit(request.path)
        record = Received("POST", parts.path, parse_qs(parts.query), dict(request.headers.items()), body, time.time())
        with self._lock:
            self.received.append(record)
            failure = self._failures.pop(0) if self._failures else None
        if self.delay:
            self._released.wait(self.delay)
        if failure is not None and failure.hang is not None:
            self._released.wait(failure.hang)
            self._answer(request, record, {"errcode": -1, "errmsg": "system busy (the fake hung)"})
            return
        if failure is not None and failure.status is not None:
            self._send(request, failure.status, b"<html>server error</html>", "text/html")
            return
        if failure is not None and failure.errcode is not None:
            self._answer(request, record, {"errcode": failure.errcode, "errmsg": "injected failure"})
            return
        self._answer(request, record, self._judge(parts.path, record))

    def _judge(self, path: str, record: Received) -> dict[str, Any]:
        if path != PATH or record.query.get("key") != [self.key]:
            hint = f" key {record.query.get('key')}" if self.echo_key_in_errors else ""
            return {"errcode": 93000, "errmsg": f"invalid webhook url{hint}"}
        if not record.headers.get("Content-Type", "").startswith("application/json"):
            return {"errcode": 40035, "errmsg": "invalid Content-Type"}
        try:
            payload = record.json
        except (UnicodeDecodeError, ValueError):
            return {"errcode": 40035, "errmsg": "invalid json"}
        if not isinstance(payload, dict) or payload.get("msgtype") != "markdown":
            return {"errcode": 40008, "errmsg": "invalid message type"}
        content = (payload.get("markdown") or {}).get("content") if isinstance(payload.get("markdown"), dict) else None
        if not isinstance(content, str) or not content:
            return {"errcode": 44004, "errmsg": "empty content"}
        if len(content.encode("utf-8")) > MAX_CONTENT_BYTES:
            return {"errcode": 40058, "errmsg": "markdown.content exceed max length 4096"}
        with self._lock:
            now = time.monotonic()
            recent = [at for at in self._accepted_at if at > now - 60]
            if self.rate_limit_per_minute is not None and len(recent) >= self.rate_limit_per_minute:
                return {"errcode": 45009, "errmsg": "api freq out of limit"}
            self._accepted_at.append(now)
            self.accepted.append(content)
        return {"errcode": 0, "errmsg": "ok"}

    def _answer(self, request: BaseHTTPRequestHandler, record: Received, answer: dict[str, Any]) -> None:
        with self._lock:
            record.answer = answer
        self._send(request, 200, json.dumps(answer, ensure_ascii=False).encode("utf-8"), "application/json")

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
        try:
            request.send_response(status)
            request.send_header("Content-Type", content_type)
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
        except OSError:
            pass  # the client gave up waiting
