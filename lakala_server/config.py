"""The Rasa server's settings: every environment variable this side reads, typed and checked
in one place. The start hook (channels.guard_server) reads them once when the server starts
(`start`), refuses to start on a value that cannot work, and logs what it uses (no secrets).
Code outside a running server (tools, tests) reads the environment at the time of the call.

The action server has its own module, actions/config.py; lakala_common/settings.py has the
parsing both share.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Tuple, Union

from lakala_common.service_hours import handoff_timeout_seconds
from lakala_common.settings import number_from_env

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_KB = 64
DEFAULT_RATE_LIMIT_PER_MINUTE = 30.0
DEFAULT_RETENTION_DAYS = 90.0
DEFAULT_ALLOWED_ORIGINS = "http://localhost:8080,http://127.0.0.1:8080"
DEFAULT_WECHAT_MESSAGE_MODE = "safe"
DEFAULT_WECHAT_API_BASE = "https://api.weixin.qq.com"
# A custom action's answer is awaited this long; then the turn is answered with the apology. Longer
# than the action server's own wait for its database (DB_TIMEOUT_SECONDS, 3 s), whose specific
# apology should win; short enough for WeChat's 5 s.
DEFAULT_ACTION_TIMEOUT_SECONDS = 4.0
# An unacknowledged WeChat outbox entry this old belongs to a dead replica (wechat/cluster.py).
DEFAULT_WECHAT_OUTBOX_RECLAIM_SECONDS = 60.0
DEFAULT_TRACKER_DB_PATH = Path("var") / "tracker.db"  # in the working directory, as `make run` starts it


class ConfigError(ValueError):
    """A setting that cannot work; the server does not start with it."""


def parse_origins(value: str) -> Union[str, List[str]]:
    """WEB_ALLOWED_ORIGINS: comma-separated `scheme://host[:port]` origins, or `*` for any."""
    if value.strip() == "*":
        return "*"
    origins = [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
    if not origins:
        # engine.io reads an empty list as "no origin check at all".
        raise ConfigError("WEB_ALLOWED_ORIGINS is empty: list the web chat's origins, or `*` for any")
    return origins


@dataclass(frozen=True)
class ServerSettings:
    max_request_kb: int  # MAX_REQUEST_KB: the largest request body the server reads
    rate_limit_per_minute: float  # RATE_LIMIT_PER_MINUTE: messages per client (REST, web chat)
    tracker_retention_days: float  # TRACKER_RETENTION_DAYS: 0 keeps every conversation
    tracker_db_url: str  # TRACKER_DB_URL, or SQLite in var/tracker.db
    web_allowed_origins: Union[str, Tuple[str, ...]]  # WEB_ALLOWED_ORIGINS
    web_session_secret: str  # WEB_SESSION_SECRET; empty: a random one per process
    rest_jwt_secret: str  # REST_JWT_SECRET; set: REST needs a JWT whose sub is the sender
    rest_open: bool  # REST_OPEN=1: REST open to anyone (development only)
    wechat_message_mode: str  # WECHAT_MESSAGE_MODE: safe (default), compat or plain
    wechat_api_base: str  # WECHAT_API_BASE: WeChat's API (tests point it at a fake)
    action_timeout_seconds: float  # ACTION_TIMEOUT_SECONDS: how long one action-server call may take
    redis_url: str  # REDIS_URL: shared state of several replicas; empty: one process, state in memory
    wechat_outbox_reclaim_seconds: float  # WECHAT_OUTBOX_RECLAIM_SECONDS: a dead replica's answers resent after
    handoff_timeout_seconds: float = 1800.0  # HANDOFF_TIMEOUT_MINUTES: an idle paused conversation goes back to the bot

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_kb * 1024

    @property
    def rest_access(self) -> str:
        if self.rest_jwt_secret:
            return "JWT"
        return "open to anyone (REST_OPEN=1)" if self.rest_open else "this machine only"


def from_env(environ: Optional[Mapping[str, str]] = None) -> ServerSettings:
    """The settings in the environment now; ConfigError for one that cannot work."""
    env = os.environ if environ is None else environ
    origins = parse_origins(env.get("WEB_ALLOWED_ORIGINS", DEFAULT_ALLOWED_ORIGINS))
    return ServerSettings(
        max_request_kb=int(number_from_env("MAX_REQUEST_KB", DEFAULT_MAX_REQUEST_KB, environ=env)),
        rate_limit_per_minute=number_from_env("RATE_LIMIT_PER_MINUTE", DEFAULT_RATE_LIMIT_PER_MINUTE, environ=env),
        tracker_retention_days=number_from_env("TRACKER_RETENTION_DAYS", DEFAULT_RETENTION_DAYS, allow_zero=True,
                                               environ=env),
        tracker_db_url=env.get("TRACKER_DB_URL", "").strip() or f"sqlite:///{DEFAULT_TRACKER_DB_PATH}",
        web_allowed_origins=origins if isinstance(origins, str) else tuple(origins),
        web_session_secret=env.get("WEB_SESSION_SECRET", "").strip(),
        rest_jwt_secret=env.get("REST_JWT_SECRET", "").strip(),
        rest_open=env.get("REST_OPEN", "").strip() == "1",
        wechat_message_mode=env.get("WECHAT_MESSAGE_MODE", "").strip().lower() or DEFAULT_WECHAT_MESSAGE_MODE,
        wechat_api_base=(env.get("WECHAT_API_BASE", "").strip() or DEFAULT_WECHAT_API_BASE).rstrip("/"),
        action_timeout_seconds=number_from_env("ACTION_TIMEOUT_SECONDS", DEFAULT_ACTION_TIMEOUT_SECONDS, environ=env),
        redis_url=env.get("REDIS_URL", "").strip(),
        wechat_outbox_reclaim_seconds=number_from_env(
            "WECHAT_OUTBOX_RECLAIM_SECONDS", DEFAULT_WECHAT_OUTBOX_RECLAIM_SECONDS, environ=env),
        handoff_timeout_seconds=handoff_timeout_seconds(env),
    )


_started: Optional[ServerSettings] = None


def start() -> ServerSettings:
    """Called once by the server's start hook: read, check and log the settings."""
    global _started
    _started = from_env()
    logger.info(
        "settings: requests up to %d KB, %g messages a minute per client, conversations kept %g days, "
        "REST %s, web chat origins %s",
        _started.max_request_kb, _started.rate_limit_per_minute, _started.tracker_retention_days,
        _started.rest_access, _started.web_allowed_origins,
    )
    return _started


def current() -> ServerSettings:
    """The settings the server started with, or (outside a started server) the environment's now."""
    return _started if _started is not None else from_env()
