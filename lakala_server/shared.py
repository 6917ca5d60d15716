"""Redis, where several Rasa replicas keep what they share (REDIS_URL). Without REDIS_URL the
server is one process and keeps that state in memory; `make run` works that way, `make cluster`
sets REDIS_URL.

One client per process and event loop, created on first use (nothing connects at import time).
"""
from __future__ import annotations

import asyncio
import weakref
from typing import Optional

import redis.asyncio as aioredis

from lakala_server import config

KEY_PREFIX = "lakala:"
# A Redis call that takes longer than this is a failure the caller answers with an apology.
SOCKET_TIMEOUT_SECONDS = 2.0

# By the loop itself, not its id: a new loop may get a closed one's id (asyncio.run in tools, tests).
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()


def enabled() -> bool:
    return bool(config.current().redis_url)


def key(*parts: str) -> str:
    """A key in the bot's namespace: key("wechat", "msgid", "123") -> lakala:wechat:msgid:123."""
    return KEY_PREFIX + ":".join(parts)


def client() -> Optional[aioredis.Redis]:
    """The Redis client of this process's running event loop, or None without REDIS_URL."""
    url = config.current().redis_url
    if not url:
        return None
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        found = aioredis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT_SECONDS, socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            health_check_interval=30,
        )
        _clients[loop] = found
    return found
