"""Reading settings from the environment, the same way in every process: the Rasa server's
(lakala_server/config.py) and the action server's (actions/config.py)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


def domain_path(repo_root: Path = REPO_ROOT) -> Path:
    """The domain outside the Rasa server (which has its loaded Domain): a `domain/` directory
    of split files when there is one, else `domain.yml`, both found from the repository root,
    never from the working directory."""
    split = repo_root / "domain"
    return split if split.is_dir() else repo_root / "domain.yml"


def number_from_env(
    name: str, default: float, *, allow_zero: bool = False, environ: Mapping[str, str] | None = None
) -> float:
    """A positive number (or zero, when allowed) from the environment; the default, with a
    warning, when the value is missing or invalid. Every numeric setting of both servers."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if value < 0 or (value == 0 and not allow_zero):
        logger.warning("Ignoring invalid %s=%r; using %s", name, raw, default)
        return default
    return value


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
