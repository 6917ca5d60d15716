"""Rasa's socket.io channel for the web chat, answering every message and
accepting connections only from the origins the chat page is served from."""
import os
from typing import Any, Awaitable, Callable, List, Optional, Union

from rasa.core.channels.channel import UserMessage
from rasa.core.channels.socketio import SocketIOInput
from sanic import Blueprint

from lakala_server.channels import guard_server, max_request_bytes
from lakala_server.fallback import never_silent

DEFAULT_ALLOWED_ORIGINS = "http://localhost:8080,http://127.0.0.1:8080"


def allowed_origins(value: Optional[str] = None) -> Union[str, List[str]]:
    """WEB_ALLOWED_ORIGINS: comma-separated `scheme://host[:port]` origins, or `*` for any."""
    if value is None:
        value = os.environ.get("WEB_ALLOWED_ORIGINS", DEFAULT_ALLOWED_ORIGINS)
    if value.strip() == "*":
        return "*"
    origins = [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
    if not origins:
        # engine.io reads an empty list as "no origin check at all".
        raise ValueError("WEB_ALLOWED_ORIGINS is empty: list the web chat's origins, or `*` for any")
    return origins


class SafeSocketIOInput(SocketIOInput):
    """`/socket.io` for the web widget, answering with an apology instead of silence."""

    @classmethod
    def name(cls) -> str:
        return "socketio"

    def __init__(self, *args: Any, cors_allowed_origins: Optional[Union[str, List[str]]] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cors_allowed_origins = cors_allowed_origins or allowed_origins()

    def blueprint(
        self, on_new_message: Callable[[UserMessage], Awaitable[Any]]
    ) -> Blueprint:
        blueprint = super().blueprint(never_silent(on_new_message))
        # Rasa creates the server with cors_allowed_origins=[], which turns engine.io's origin
        # check off, so any web page could talk to the bot in its visitor's name. With a list,
        # engine.io refuses other origins (polling and WebSocket) and answers CORS for these.
        assert self.sio is not None
        self.sio.eio.cors_allowed_origins = self.cors_allowed_origins
        # engine.io accepts 1 MB per message by default; the server's request cap applies here too.
        self.sio.eio.max_http_buffer_size = max_request_bytes()
        return guard_server(blueprint)
