"""The local PostgreSQL server for tests: reachability, a throw-away schema per test, and a
relay that can cut the line to it.

Tests that need PostgreSQL run whenever the server (TEST_POSTGRES_URL, by default the one on
this machine) answers. When it does not, they fail on CI (`CI` set), and elsewhere they are
skipped with the reason and a notice at the end of the run that names them, so that a local
run never leaves them out silently."""
import functools
import os
import uuid
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from tests.support.relay import TcpRelay

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

# (test, reason) for every test that could not run for want of the server.
not_run: List[Tuple[str, str]] = []


@functools.cache
def _unreachable(url: str) -> Optional[str]:
    """Why the server at `url` cannot be used, or None; asked once per run."""
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3}, future=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa_exc.DBAPIError as error:
        first_line = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        return f"PostgreSQL at {make_url(url).render_as_string(hide_password=True)} unreachable: {first_line}"
    finally:
        engine.dispose()
    return None


def reachable_postgres_url(test: str = "") -> str:
    """TEST_POSTGRES_URL (default the machine's server). If it is unreachable: fails on CI;
    elsewhere skips, and the test is named in the notice at the end of the run."""
    url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    reason = _unreachable(url)
    if reason is None:
        return url
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the PostgreSQL tests must run)")
    not_run.append((test, reason))
    pytest.skip(f"{reason}; start it or set TEST_POSTGRES_URL (CI fails here)")


def pytest_terminal_summary(terminalreporter) -> None:  # a hook: see tests/unit/conftest.py
    if not not_run:
        return
    terminalreporter.section("PostgreSQL tests NOT run", sep="!", red=True, bold=True)
    reasons = sorted({reason for _, reason in not_run})
    for reason in reasons:
        terminalreporter.write_line(reason, red=True)
    terminalreporter.write_line(f"{len(not_run)} tests need it and did not run; on CI (CI set) they fail:")
    for test, _ in not_run:
        terminalreporter.write_line(f"  {test or '(a fixture)'}")
    not_run.clear()  # the hook is registered by each conftest that imports it: print once


@contextmanager
def postgres_schema(base_url: str, prefix: str) -> Iterator[Tuple[str, str]]:
    """(schema, URL whose connections use it): a fresh schema, dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base_url, future=True)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield schema, url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


class Relay(TcpRelay):
    """A TCP relay in front of the real PostgreSQL server (tests/support/relay.py): `url` reaches
    the same database through it, `freeze()` partitions it, `close()` ends its connections."""

    def __init__(self, url: str) -> None:
        target = make_url(url)
        super().__init__(target.host or "127.0.0.1", target.port or 5432)
        self.url = target.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)
