"""The action server's settings: every environment variable this side reads, typed and checked
in one place, with safe local defaults. The server reads them once when it starts (`start`);
code outside a running action server (tools, tests) reads the environment at the time of the
call. The Rasa server has its own module, lakala_server/config.py."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lakala_common.settings import REPO_ROOT, domain_path, number_from_env, private_sqlite_file  # noqa: F401

logger = logging.getLogger(__name__)

DEFAULT_DB_TIMEOUT_SECONDS = 3.0
DEFAULT_LOCK_FAILURES = 10
DEFAULT_LOCK_MINUTES = 15.0
DEFAULT_VERIFICATION_TTL_MINUTES = 30.0
DEFAULT_HOST = "127.0.0.1"  # Rasa calls it on this machine; set ACTION_SERVER_HOST for another host
DEFAULT_PORT = 5055
DEFAULT_MAX_BODY_KB = 2048  # a whole conversation is sent with each call
DEFAULT_WECOM_POLL_SECONDS = 5.0
DEFAULT_TICKET_PHONE_RETENTION_DAYS = 30.0


@dataclass(frozen=True)
class Settings:
    repo_root: Path
    terminal_db_url: str
    db_timeout_seconds: float
    uses_default_db: bool
    lock_failures: int = DEFAULT_LOCK_FAILURES  # wrong phone tails per terminal before a lock-out
    lock_minutes: float = DEFAULT_LOCK_MINUTES  # the first lock-out; each further one doubles
    seed_demo: bool = False  # SEED_DEMO_TERMINALS=1: demo terminals in a configured database too
    phone_tail_key: str = ""  # PHONE_TAIL_KEY; empty: var/phone_tail.key
    verification_secret: str = ""  # VERIFICATION_SECRET; empty: a random one per process
    verification_ttl_minutes: float = DEFAULT_VERIFICATION_TTL_MINUTES  # VERIFICATION_TTL_MINUTES
    host: str = DEFAULT_HOST  # ACTION_SERVER_HOST
    port: int = DEFAULT_PORT  # ACTION_SERVER_PORT
    token: str = ""  # ACTION_SERVER_TOKEN: Rasa's calls must carry it
    max_body_kb: int = DEFAULT_MAX_BODY_KB  # ACTION_SERVER_MAX_BODY_KB
    log_level: str = "INFO"  # LOG_LEVEL
    # WECOM_WEBHOOK_URL: the support group's robot (its key is a secret: kept out of repr);
    # empty: callback tickets are kept but nobody is notified.
    wecom_webhook_url: str = field(default="", repr=False)
    wecom_poll_seconds: float = DEFAULT_WECOM_POLL_SECONDS  # WECOM_POLL_SECONDS: how often due notifications go out
    # TICKET_PHONE_RETENTION_DAYS: a closed ticket's phone number is deleted this long after; 0: at once
    ticket_phone_retention_days: float = DEFAULT_TICKET_PHONE_RETENTION_DAYS
    # TRACKER_DB_URL: the Rasa server's conversations, read by the tickets CLI for transcripts
    tracker_db_url: str = ""

    @property
    def var_dir(self) -> Path:
        return self.repo_root / "var"

    @property
    def domain_path(self) -> Path:
        return domain_path(self.repo_root)

    def ensure_local_dirs(self) -> None:
        """Create the directory of the default SQLite file; a configured URL is left alone."""
        if self.uses_default_db:
            self.var_dir.mkdir(parents=True, exist_ok=True)


def seed_demo_requested() -> bool:
    """SEED_DEMO_TERMINALS=1 seeds the demo terminals into a configured (non-default) database."""
    return get_settings().seed_demo


def default_db_url(repo_root: Path = REPO_ROOT) -> str:
    return f"sqlite:///{repo_root / 'var' / 'terminals.db'}"


def default_tracker_db_url(repo_root: Path = REPO_ROOT) -> str:
    return f"sqlite:///{repo_root / 'var' / 'tracker.db'}"


def _timeout_from_env(raw: str | None) -> float:
    if raw is None or not raw.strip():
        return DEFAULT_DB_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        logger.warning("Ignoring invalid DB_TIMEOUT_SECONDS=%r; using %s", raw, DEFAULT_DB_TIMEOUT_SECONDS)
        return DEFAULT_DB_TIMEOUT_SECONDS
    return value


def _webhook_from_env(raw: str | None) -> str:
    """WECOM_WEBHOOK_URL if it is an http(s) URL; else empty (notifications off), with a
    warning that never repeats the value (it holds the robot's key)."""
    value = (raw or "").strip()
    if not value:
        return ""
    parsed = urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        logger.warning("Ignoring WECOM_WEBHOOK_URL: not an http(s) URL; ticket notifications are off")
        return ""
    return value


def from_env() -> Settings:
    """The settings in the environment now."""
    url = os.environ.get("TERMINAL_DB_URL", "").strip()
    port = os.environ.get("ACTION_SERVER_PORT", "").strip()
    return Settings(
        repo_root=REPO_ROOT,
        terminal_db_url=url or default_db_url(),
        db_timeout_seconds=_timeout_from_env(os.environ.get("DB_TIMEOUT_SECONDS")),
        uses_default_db=not url,
        lock_failures=int(number_from_env("TERMINAL_LOCK_FAILURES", DEFAULT_LOCK_FAILURES)),
        lock_minutes=number_from_env("TERMINAL_LOCK_MINUTES", DEFAULT_LOCK_MINUTES),
        seed_demo=os.environ.get("SEED_DEMO_TERMINALS", "").strip().lower() in ("1", "true", "yes"),
        phone_tail_key=os.environ.get("PHONE_TAIL_KEY", "").strip(),
        verification_secret=os.environ.get("VERIFICATION_SECRET", "").strip(),
        verification_ttl_minutes=number_from_env("VERIFICATION_TTL_MINUTES", DEFAULT_VERIFICATION_TTL_MINUTES),
        host=os.environ.get("ACTION_SERVER_HOST", "").strip() or DEFAULT_HOST,
        port=int(number_from_env("ACTION_SERVER_PORT", DEFAULT_PORT)) if port else DEFAULT_PORT,
        token=os.environ.get("ACTION_SERVER_TOKEN", "").strip(),
        max_body_kb=int(number_from_env("ACTION_SERVER_MAX_BODY_KB", DEFAULT_MAX_BODY_KB)),
        log_level=os.environ.get("LOG_LEVEL", "").strip() or "INFO",
        wecom_webhook_url=_webhook_from_env(os.environ.get("WECOM_WEBHOOK_URL")),
        wecom_poll_seconds=number_from_env("WECOM_POLL_SECONDS", DEFAULT_WECOM_POLL_SECONDS),
        ticket_phone_retention_days=number_from_env(
            "TICKET_PHONE_RETENTION_DAYS", DEFAULT_TICKET_PHONE_RETENTION_DAYS, allow_zero=True),
        tracker_db_url=os.environ.get("TRACKER_DB_URL", "").strip() or default_tracker_db_url(),
    )


_started: Settings | None = None


def start() -> Settings:
    """Called once by the action server when it starts."""
    global _started
    _started = from_env()
    return _started


def get_settings() -> Settings:
    """The settings the action server started with, or (outside it) the environment's now."""
    return _started if _started is not None else from_env()
