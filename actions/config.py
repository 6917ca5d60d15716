"""Settings for the action server, read from the environment with safe local defaults."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB_TIMEOUT_SECONDS = 3.0
DEFAULT_LOCK_FAILURES = 10
DEFAULT_LOCK_MINUTES = 15.0


@dataclass(frozen=True)
class Settings:
    repo_root: Path
    terminal_db_url: str
    db_timeout_seconds: float
    uses_default_db: bool
    lock_failures: int = DEFAULT_LOCK_FAILURES  # wrong phone tails per terminal before a lock-out
    lock_minutes: float = DEFAULT_LOCK_MINUTES  # the first lock-out; each further one doubles

    @property
    def var_dir(self) -> Path:
        return self.repo_root / "var"

    @property
    def domain_path(self) -> Path:
        return self.repo_root / "domain.yml"

    def ensure_local_dirs(self) -> None:
        """Create the directory of the default SQLite file; a configured URL is left alone."""
        if self.uses_default_db:
            self.var_dir.mkdir(parents=True, exist_ok=True)


def seed_demo_requested() -> bool:
    """SEED_DEMO_TERMINALS=1 seeds the demo terminals into a configured (non-default) database."""
    return os.environ.get("SEED_DEMO_TERMINALS", "").strip().lower() in ("1", "true", "yes")


def private_sqlite_file(url: str) -> None:
    """Create a SQLite database file readable by its owner only (SQLite gives its -wal and
    -shm files the same mode); any other URL is left alone."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    os.chmod(path, 0o600)


def default_db_url(repo_root: Path = REPO_ROOT) -> str:
    return f"sqlite:///{repo_root / 'var' / 'terminals.db'}"


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


def number_from_env(name: str, default: float, *, allow_zero: bool = False) -> float:
    """A positive number (or zero, when allowed) from the environment; the default, with a
    warning, when the value is missing or invalid. Every numeric setting of both servers."""
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if value < 0 or (value == 0 and not allow_zero):
        logger.warning("Ignoring invalid %s=%r; using %s", name, raw, default)
        return default
    return value


def get_settings() -> Settings:
    """Read the environment now (not at import time), so tests and processes can override it."""
    url = os.environ.get("TERMINAL_DB_URL", "").strip()
    return Settings(
        repo_root=REPO_ROOT,
        terminal_db_url=url or default_db_url(),
        db_timeout_seconds=_timeout_from_env(os.environ.get("DB_TIMEOUT_SECONDS")),
        uses_default_db=not url,
        lock_failures=int(number_from_env("TERMINAL_LOCK_FAILURES", DEFAULT_LOCK_FAILURES)),
        lock_minutes=number_from_env("TERMINAL_LOCK_MINUTES", DEFAULT_LOCK_MINUTES),
    )
