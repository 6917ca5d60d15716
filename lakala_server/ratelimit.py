"""Per-client rate limits in front of the REST and web-chat channels.

Each client gets RATE_LIMIT_PER_MINUTE messages a minute (default 30), refilled evenly,
with as large a burst; over that, REST answers 429 with the polite `utter_rate_limited`
text from domain.yml and socket.io refuses the request. A client is its IP address; a
request from this machine that carries X-Forwarded-For comes through a local proxy
(nginx), and the address the proxy appended is the client. Other requests from this
machine (make run's curl, the benchmark, the tests) are not limited. WeChat is not limited
here: its requests come from Tencent's few addresses and are signed.

The buckets are kept in memory, at most MAX_CLIENTS of them (the least recently seen go
first), so each server process limits on its own.
"""
import logging
import time
from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple

from sanic import response
from sanic.request import Request
from sanic.response import HTTPResponse

from lakala_server import config, texts
from lakala_server.channels import is_loopback

logger = logging.getLogger(__name__)

MAX_CLIENTS = 50_000
LIMITED_PREFIXES = ("/webhooks/rest/", "/socket.io/")
RESPONSE = "utter_rate_limited"


def per_minute() -> float:
    return config.current().rate_limit_per_minute


class TokenBuckets:
    """`rate` tokens a minute per key, at most `rate` saved up; bounded in size."""

    def __init__(self, rate_per_minute: float, max_keys: int = MAX_CLIENTS) -> None:
        self.capacity = rate_per_minute
        self.per_second = rate_per_minute / 60.0
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, Tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: Optional[float] = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.per_second)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed


def origin_of(request: Any) -> str:
    """The address a request came from: its peer, or, when the peer is a proxy on this machine
    (make cluster's nginx sets X-Forwarded-For to its own peer), the address the proxy names."""
    peer = request.ip or ""
    if not is_loopback(peer):
        return peer
    forwarded = request.headers.get("X-Forwarded-For") or ""
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    return hops[-1] if hops else peer


def client_of(request: Any) -> Optional[str]:
    """The client a request counts against, or None for this machine's own tools."""
    origin = origin_of(request)
    return None if is_loopback(origin) else origin


def limited_message() -> Dict[str, Any]:
    return {"text": texts.response(RESPONSE)["text"]}


def install(app: Any) -> None:
    """Adds the limit to a Sanic app (idempotent)."""
    if getattr(app.ctx, "lakala_rate_limit", None) is not None:
        return
    buckets = TokenBuckets(per_minute())
    app.ctx.lakala_rate_limit = buckets

    async def limit(request: Request) -> Optional[HTTPResponse]:
        if request.method == "OPTIONS" or not request.path.startswith(LIMITED_PREFIXES):
            return None
        client = client_of(request)
        if client is None or buckets.allow(client):
            return None
        if request.path.startswith("/webhooks/rest/"):
            return response.json([{"recipient_id": "", **limited_message()}], status=429)
        return response.text("rate limited", status=429)

    app.register_middleware(limit, "request")
