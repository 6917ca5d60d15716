"""Rasa's REST channel, guaranteed to answer every message, and the request-size cap every
channel of the project puts on the Rasa server."""
import os
from typing import Any, Awaitable, Callable

from rasa.core.channels.channel import UserMessage
from rasa.core.channels.rest import RestInput
from sanic import Blueprint

from lakala_server import speedups
from lakala_server.fallback import never_silent

DEFAULT_MAX_REQUEST_KB = 64


def max_request_bytes() -> int:
    """MAX_REQUEST_KB (default 64): the largest request body the Rasa server reads."""
    raw = os.environ.get("MAX_REQUEST_KB", "").strip()
    kilobytes = int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_REQUEST_KB
    return kilobytes * 1024


def cap_request_size(blueprint: Blueprint) -> Blueprint:
    """Make the server refuse (413) a larger body before reading it; Sanic's own limit is 100 MB."""

    async def cap(app: Any, *_: Any) -> None:
        app.config.REQUEST_MAX_SIZE = min(app.config.REQUEST_MAX_SIZE, max_request_bytes())

    blueprint.listener("before_server_start")(cap)
    return blueprint


class SafeRestInput(RestInput):
    """`/webhooks/rest/webhook`, answering with an apology instead of silence."""

    @classmethod
    def name(cls) -> str:
        return "rest"

    def blueprint(
        self, on_new_message: Callable[[UserMessage], Awaitable[Any]]
    ) -> Blueprint:
        blueprint = super().blueprint(never_silent(on_new_message))
        # The model is loaded before the server starts (Rasa's before_server_start listener).
        blueprint.listener("after_server_start")(speedups.freeze_loaded_objects)
        return cap_request_size(blueprint)
