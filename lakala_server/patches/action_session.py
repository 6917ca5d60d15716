"""Replaces `EndpointConfig.session` (rasa/utils/endpoints.py).

Why: Rasa opens a new HTTP session, and so a new TCP connection, for every call to the action
server (forms call it once or twice per message). Calls now share one keep-alive session per
endpoint and event loop, with the same headers, auth and timeout; a connection the action
server closed is not reused, and one idle for KEEPALIVE_S is closed by the client first, so it
never races the server's own closing. Each call sends the whole conversation as JSON; the
shared session encodes it with orjson (json_codec.py: the same JSON values).

Proved by: tests/unit/test_patches.py::test_action_server_calls_share_one_connection,
::test_an_idle_connection_is_dropped_before_the_action_server_drops_it,
::test_action_server_calls_keep_headers_and_basic_auth and
::test_request_bodies_encode_the_same_values_as_json.
"""
import asyncio
import weakref
from typing import Any

import aiohttp
from rasa.utils.endpoints import DEFAULT_REQUEST_TIMEOUT, EndpointConfig

from lakala_server.json_codec import dumps

# An idle kept connection is closed by the client after this many seconds, before the action
# server closes it (Sanic, which the action server runs on, closes them after 5 s). Otherwise
# the client could send a request on a connection just as the server closes it: a lost answer.
KEEPALIVE_S = 2.0
# Where each endpoint keeps its sessions, one per event loop.
SESSIONS_ATTRIBUTE = "_lakala_sessions"


def _session_for(endpoint: EndpointConfig, keep_alive: bool = False) -> aiohttp.ClientSession:
    """Rasa's EndpointConfig.session (same headers, auth and timeout), encoding with `dumps`;
    with `keep_alive` (inside the server's event loop), idle connections live KEEPALIVE_S."""
    auth = None
    if endpoint.basic_auth:
        auth = aiohttp.BasicAuth(endpoint.basic_auth["username"], endpoint.basic_auth["password"])
    return aiohttp.ClientSession(
        headers=endpoint.headers,
        auth=auth,
        timeout=aiohttp.ClientTimeout(total=DEFAULT_REQUEST_TIMEOUT),
        json_serialize=dumps,
        connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S) if keep_alive else None,
    )


class _KeptSession:
    """`async with` yields the shared session and leaves it open."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def __aenter__(self) -> aiohttp.ClientSession:
        return self._session

    async def __aexit__(self, *exc_info: Any) -> None:
        return None


def _shared_session(self: EndpointConfig) -> _KeptSession:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop: a caller outside the server gets a session of its own, like Rasa's
        return _session_for(self)
    sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
        self.__dict__.setdefault(SESSIONS_ATTRIBUTE, weakref.WeakKeyDictionary())
    )
    session = sessions.get(loop)
    if session is None or session.closed:
        session = sessions[loop] = _session_for(self, keep_alive=True)
    return _KeptSession(session)


def install() -> None:
    EndpointConfig.session = _shared_session  # type: ignore[method-assign]
