"""Rasa's REST channel, guaranteed to answer every message and bound to its caller, and the
request-size cap every channel of the project puts on the Rasa server.

Who may use REST, and as which conversation (Rasa's REST channel believes any `sender`):
- REST_JWT_SECRET set: every request carries `Authorization: Bearer <JWT>` (HS256, signed
  with that secret) whose `sub` is the body's `sender`; 401 otherwise. The site that embeds
  the bot issues the tokens to its signed-in merchants.
- else REST_OPEN=1: anyone, as any sender (local development only);
- else (the default, what `make run` gives a newcomer): loopback clients only.
Stored REST conversations are named `rest:<sender>`, so a REST caller can never address a
WeChat or web-chat conversation, and the channel is always `rest`, whatever the body says.
A message carrying `metadata.message_id` is handled once, its retries answered with the first
answer (message_ids.py).
"""
import ipaddress
from typing import Any, Awaitable, Callable, Optional

import jwt
from rasa.core.channels.channel import UserMessage
from rasa.core.channels.rest import RestInput
from sanic import Blueprint
from sanic.exceptions import Forbidden, InvalidUsage, Unauthorized
from sanic.request import Request

from lakala_common import log_masking
from lakala_server import config, fallback, message_ids, patches, texts
from lakala_server.fallback import never_silent
from lakala_server.message_ids import exactly_once


def max_request_bytes() -> int:
    """MAX_REQUEST_KB (default 64): the largest request body the Rasa server reads."""
    return config.current().max_request_bytes


def guard_server(blueprint: Blueprint) -> Blueprint:
    """The start hook every channel of this project registers; the first to run does the work.

    Before the server starts (and before Rasa loads the model): mask digit runs in every log
    line, install the Rasa patches (lakala_server/patches, which refuse a Rasa version they
    were not written for), refuse (413) a body over the cap before reading it (Sanic's own
    limit is 100 MB), and put the per-client rate limits in front of the channels. After it
    has started: freeze what start-up loaded out of the garbage collector's sight."""

    async def before_start(app: Any, *_: Any) -> None:
        if getattr(app.ctx, "lakala_started", False):
            return
        app.ctx.lakala_started = True
        from lakala_server import ratelimit  # it needs is_loopback from here

        log_masking.install()
        config.start()
        patches.install()
        app.config.REQUEST_MAX_SIZE = min(app.config.REQUEST_MAX_SIZE, max_request_bytes())
        ratelimit.install(app)

    async def after_start(app: Any, *_: Any) -> None:
        if getattr(app.ctx, "lakala_frozen", False):
            return
        app.ctx.lakala_frozen = True
        texts.use(getattr(getattr(app.ctx, "agent", None), "domain", None))  # loaded before the start
        message_ids.use(app)
        await patches.freeze_loaded_objects()

    blueprint.listener("before_server_start")(before_start)
    blueprint.listener("after_server_start")(after_start)
    return blueprint


REST_PREFIX = "rest:"
MAX_SENDER_CHARS = 128


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def authorized_sender(request: Request, sender: Any) -> str:
    """The conversation a REST request may speak in, or a 4xx (see the module's docstring)."""
    if not isinstance(sender, str) or not sender.strip() or len(sender) > MAX_SENDER_CHARS:
        raise InvalidUsage("sender must be a non-empty string of at most 128 characters")
    from lakala_server import ratelimit

    settings = config.current()
    secret = settings.rest_jwt_secret
    if secret:
        header = request.headers.get("Authorization") or ""
        if not header.startswith("Bearer "):
            raise Unauthorized("a bearer token is required", scheme="Bearer")
        try:
            claims = jwt.decode(header[len("Bearer "):].strip(), secret, algorithms=["HS256"],
                                options={"require": ["sub"]})
        except jwt.PyJWTError:
            raise Unauthorized("invalid token", scheme="Bearer") from None
        if claims.get("sub") != sender:
            raise Forbidden("the token is for another sender")
    elif not settings.rest_open and not is_loopback(ratelimit.origin_of(request)):
        raise Forbidden("REST is open to this machine only; set REST_JWT_SECRET to expose it")
    return REST_PREFIX + sender


class SafeRestInput(RestInput):
    """`/webhooks/rest/webhook`, answering with an apology instead of silence."""

    @classmethod
    def name(cls) -> str:
        return "rest"

    async def _extract_sender(self, req: Request) -> Optional[str]:
        return authorized_sender(req, (req.json or {}).get("sender"))

    def _extract_input_channel(self, req: Request) -> str:
        return self.name()  # never what the body claims: other channels are trusted differently

    def blueprint(
        self, on_new_message: Callable[[UserMessage], Awaitable[Any]]
    ) -> Blueprint:
        blueprint = guard_server(super().blueprint(exactly_once(never_silent(on_new_message))))
        blueprint.middleware(_new_turn, "request")
        blueprint.middleware(_retry_when_not_stored, "response")
        return blueprint


async def _new_turn(request: Request) -> None:
    # Sanic serves a kept-alive connection's requests in one task: start each with a clean flag.
    fallback.turn_not_stored.set(False)


async def _retry_when_not_stored(request: Request, answer: Any) -> None:
    """A turn the conversation store could not keep is answered with the apology and 503, so a
    client that retries (with the same message id) sends it again once the store is back."""
    if fallback.turn_not_stored.get() and answer is not None and answer.status == 200:
        answer.status = 503
        answer.headers["Retry-After"] = "2"
