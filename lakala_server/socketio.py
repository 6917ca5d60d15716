"""Rasa's socket.io channel for the web chat: it answers every message, accepts connections
only from the origins the chat page is served from, and binds each socket to its session.

Rasa's own channel believes the `session_id` in every message, so a socket that knew or
guessed another visitor's session id could speak in that conversation and receive its
answers. Here the server issues the session id: `<id>.<mac>`, signed with WEB_SESSION_SECRET.
A socket joins one session, the one it was given or a signed one it brings back after a page
reload, and a message naming any other session is refused. The conversation is stored as
`web:<id>`, so no other channel can address it, and answers go to the sockets of that
session only. Messages count against the sender's per-client rate limit (ratelimit.py), also
over a WebSocket, where the HTTP middleware sees nothing after the upgrade. A message carrying
`metadata.message_id` is handled once; a retry, after a reconnect too, gets the first answer
emitted to its session again (message_ids.py).
"""
import base64
import hashlib
import hmac
import logging
import secrets
from typing import Any, Awaitable, Callable, Dict, List, Optional, Union

import socketio
from rasa.core.channels.channel import UserMessage
from rasa.core.channels.socketio import SocketIOInput
from sanic import Blueprint

from lakala_server import config, ratelimit, texts
from lakala_server.channels import guard_server, max_request_bytes
from lakala_server.fallback import never_silent
from lakala_server.message_ids import exactly_once

logger = logging.getLogger(__name__)

DEFAULT_ALLOWED_ORIGINS = config.DEFAULT_ALLOWED_ORIGINS
# The Redis pub/sub channel the replicas' socket.io servers share (REDIS_URL).
ROOMS_CHANNEL = "lakala:socketio"


def allowed_origins(value: Optional[str] = None) -> Union[str, List[str]]:
    """WEB_ALLOWED_ORIGINS: comma-separated `scheme://host[:port]` origins, or `*` for any."""
    if value is not None:
        return config.parse_origins(value)
    origins = config.current().web_allowed_origins
    return origins if isinstance(origins, str) else list(origins)


WEB_PREFIX = "web:"
INVALID_SESSION_RESPONSE = "utter_web_session_invalid"
_ID_BYTES = 16
_MAC_BYTES = 16


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SessionIds:
    """Signed web-chat session ids, `<id>.<mac>`; the stored conversation is `web:<id>`."""

    def __init__(self, secret: Optional[bytes] = None) -> None:
        if secret is None:
            configured = config.current().web_session_secret
            if configured:
                secret = configured.encode()
            else:
                logger.warning("WEB_SESSION_SECRET is not set: web chats end when this process does")
                secret = secrets.token_bytes(32)
        self._secret = secret

    def _mac(self, session: str) -> str:
        return _b64(hmac.new(self._secret, b"web-session|" + session.encode(), hashlib.sha256).digest()[:_MAC_BYTES])

    def issue(self) -> str:
        session = _b64(secrets.token_bytes(_ID_BYTES))
        return f"{session}.{self._mac(session)}"

    def conversation(self, session_id: Any) -> Optional[str]:
        """`web:<id>` for a session id this server signed, else None."""
        if not isinstance(session_id, str) or len(session_id) > 64 or session_id.count(".") != 1:
            return None
        session, mac = session_id.split(".")
        if not session or not hmac.compare_digest(mac, self._mac(session)):
            return None
        return WEB_PREFIX + session


def invalid_session_message() -> Dict[str, Any]:
    return {"text": texts.response(INVALID_SESSION_RESPONSE)["text"]}


class SafeSocketIOInput(SocketIOInput):
    """`/socket.io` for the web widget, answering with an apology instead of silence."""

    @classmethod
    def name(cls) -> str:
        return "socketio"

    def __init__(self, *args: Any, cors_allowed_origins: Optional[Union[str, List[str]]] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cors_allowed_origins = cors_allowed_origins or allowed_origins()
        self.session_ids = SessionIds()
        # The session each connected socket joined (its signed id); gone when it disconnects.
        self.joined: Dict[str, str] = {}
        self.message_limit = ratelimit.TokenBuckets(ratelimit.per_minute())

    def blueprint(
        self, on_new_message: Callable[[UserMessage], Awaitable[Any]]
    ) -> Blueprint:
        blueprint = super().blueprint(exactly_once(never_silent(on_new_message)))
        # Rasa creates the server with cors_allowed_origins=[], which turns engine.io's origin
        # check off, so any web page could talk to the bot in its visitor's name. With a list,
        # engine.io refuses other origins (polling and WebSocket) and answers CORS for these.
        assert self.sio is not None
        self.sio.eio.cors_allowed_origins = self.cors_allowed_origins
        # engine.io accepts 1 MB per message by default; the server's request cap applies here too.
        self.sio.eio.max_http_buffer_size = max_request_bytes()
        self._quiet_websocket_close()
        self._bind_sessions()
        self._share_rooms()
        return guard_server(blueprint)

    def _share_rooms(self) -> None:
        """With REDIS_URL (several replicas), emits go through Redis, so an answer reaches a
        session's sockets whichever replica they are connected to. Rasa creates the server without
        a client manager; this one is set before any socket connects, when python-socketio
        initialises it."""
        url = config.current().redis_url
        if not url:
            return
        assert self.sio is not None
        manager = socketio.AsyncRedisManager(url, channel=ROOMS_CHANNEL)
        manager.set_server(self.sio)
        self.sio.manager = manager
        self.sio.manager_initialized = False

    def _quiet_websocket_close(self) -> None:
        """engine.io's handler returns None when a WebSocket closes, and Sanic 21.12 logs that as
        a server error with a traceback, once for every visitor who leaves (sanic-org/sanic#2572).
        Sanic accepts None from a handler marked `is_websocket`; engine.io's route is created
        from `eio.handle_request` when the blueprint is registered, so this marked one is used."""
        assert self.sio is not None
        handle = self.sio.eio.handle_request

        async def handle_request(*args: Any, **kwargs: Any) -> Any:
            return await handle(*args, **kwargs)

        handle_request.is_websocket = True  # type: ignore[attr-defined]
        self.sio.eio.handle_request = handle_request

    def _bind_sessions(self) -> None:
        """Replaces Rasa's session_request and wraps its message handler (module docstring)."""
        sio = self.sio
        assert sio is not None
        namespace = self.namespace or "/"
        rasa_handle_message = sio.handlers[namespace][self.user_message_evt]
        rasa_disconnect = sio.handlers[namespace]["disconnect"]

        @sio.on("session_request", namespace=self.namespace)
        async def session_request(sid: str, data: Any) -> None:
            requested = data.get("session_id") if isinstance(data, dict) else None
            session_id = requested if self.session_ids.conversation(requested) else self.session_ids.issue()
            previous = self.joined.get(sid)
            if previous is not None and previous != session_id:
                sio.leave_room(sid, self.session_ids.conversation(previous), namespace=namespace)
            self.joined[sid] = session_id
            sio.enter_room(sid, self.session_ids.conversation(session_id), namespace=namespace)
            await sio.emit("session_confirm", session_id, room=sid, namespace=namespace)

        @sio.on(self.user_message_evt, namespace=self.namespace)
        async def handle_message(sid: str, data: Any) -> None:
            session_id = self.joined.get(sid)
            if session_id is None or not isinstance(data, dict) or data.get("session_id") != session_id:
                logger.warning("socket.io message refused: not for the session this socket joined")
                await sio.emit(self.bot_message_evt, invalid_session_message(), room=sid, namespace=namespace)
                return
            if not self._allowed(sid):
                await sio.emit(self.bot_message_evt, ratelimit.limited_message(), room=sid, namespace=namespace)
                return
            await rasa_handle_message(sid, dict(data, session_id=self.session_ids.conversation(session_id)))

        @sio.on("disconnect", namespace=self.namespace)
        async def disconnect(sid: str) -> None:
            self.joined.pop(sid, None)
            await rasa_disconnect(sid)

    def _allowed(self, sid: str) -> bool:
        """The socket's client within its per-client rate limit (ratelimit.py)."""
        assert self.sio is not None
        request = (self.sio.get_environ(sid) or {}).get("sanic.request")
        client = ratelimit.client_of(request) if request is not None else None
        return client is None or self.message_limit.allow(client)
