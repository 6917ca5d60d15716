"""Starts the action server so that only Rasa can call it.

It is rasa_sdk's own Sanic app (`rasa_sdk.endpoint.create_app`) with the project's actions,
run with three guards that `rasa run actions` does not have:

- it listens on ACTION_SERVER_HOST, by default 127.0.0.1 (set 0.0.0.0 or an interface
  address only when Rasa runs on another host);
- every call except /health must carry ACTION_SERVER_TOKEN, which Rasa sends from
  `action_endpoint.token` in endpoints.yml; it is compared in constant time, 401 otherwise;
- request bodies are capped at ACTION_SERVER_MAX_BODY_KB, before and after deflate, and an
  error reply never echoes the request (rasa_sdk's own handler sends the body back);
- digit runs in its log lines are masked (lakala_common/log_masking.py).

It also runs the callback-ticket notification loop (actions/notify.py) on its event loop,
from server start to server stop.

usage: python -m actions.server [--port 5055]
"""
from __future__ import annotations

import argparse
import hmac
import logging
import sys
import zlib
from typing import Optional

from rasa_sdk import utils
from rasa_sdk.endpoint import create_app
from sanic import Sanic, response
from sanic.request import Request
from sanic.response import HTTPResponse

from actions import config
from actions.notify import NotificationLoop
from lakala_common import log_masking

logger = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
OPEN_PATHS = frozenset({"/health"})


def _max_body_bytes() -> int:
    return config.get_settings().max_body_kb * 1024


def inflated_size_within(body: bytes, limit: int) -> bool:
    """Whether a deflate body inflates to at most `limit` bytes, without inflating more than that."""
    inflater = zlib.decompressobj()
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error:
        return True  # not our concern: rasa_sdk answers a broken body itself
    return len(inflated) <= limit and not inflater.unconsumed_tail


def guarded_app(token: str, max_body: int, package: str = "actions") -> Sanic:
    app = create_app(package, cors_origins=None)
    app.config.REQUEST_MAX_SIZE = max_body
    expected = token.encode()

    @app.middleware("request")
    async def only_rasa(request: Request) -> Optional[HTTPResponse]:
        if request.path in OPEN_PATHS:
            return None
        given = (request.args.get("token") or "").encode()
        if not hmac.compare_digest(given, expected):
            return response.json({"error": "unauthorized"}, status=401)
        if request.headers.get("Content-Encoding") == "deflate" and not inflated_size_within(request.body, max_body):
            return response.json({"error": "request body too large"}, status=413)
        return None

    @app.exception(Exception)
    async def no_echo(request: Request, exception: Exception) -> HTTPResponse:
        status = getattr(exception, "status_code", 500) or 500
        if status >= 500:
            logger.error("action server error on %s", request.path, exc_info=exception)
        return response.json({"error": "internal error" if status >= 500 else str(exception)}, status=status)

    return app


def attach_notifications(app: Sanic) -> None:
    """Posts callback tickets to the support group while the server runs (actions/notify.py)."""

    @app.listener("after_server_start")
    async def start_notifications(app: Sanic, _loop: object) -> None:
        app.ctx.notifications = NotificationLoop()
        app.ctx.notifications.start()

    @app.listener("before_server_stop")
    async def stop_notifications(app: Sanic, _loop: object) -> None:
        notifications = getattr(app.ctx, "notifications", None)
        if notifications is not None:
            await notifications.stop()


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="the action server, callable by Rasa only")
    settings = config.start()
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args(argv)
    token = settings.token
    if len(token) < MIN_TOKEN_CHARS:
        print(f"ACTION_SERVER_TOKEN must be set (at least {MIN_TOKEN_CHARS} characters); "
              "`make run` generates one in var/secrets.env", file=sys.stderr)
        return 2
    host = settings.host
    log_masking.install()
    utils.configure_colored_logging(settings.log_level)
    utils.update_sanic_log_level()
    app = guarded_app(token, _max_body_bytes())
    attach_notifications(app)
    logger.info("Action server listening on %s:%s (token required)", host, args.port)
    app.run(host, args.port, workers=1, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
