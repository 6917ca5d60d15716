"""Rasa's REST channel, guaranteed to answer every message."""
from typing import Any, Awaitable, Callable

from rasa.core.channels.channel import UserMessage
from rasa.core.channels.rest import RestInput
from sanic import Blueprint

from lakala_server import speedups
from lakala_server.fallback import never_silent


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
        return blueprint
