"""The local PostgreSQL server for tests: reachability and a throw-away schema per test."""
import os
import uuid
from contextlib import contextmanager
from typing import Iterator, Tuple

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def reachable_postgres_url() -> str:
    """TEST_POSTGRES_URL (default the machine's server); skips if unreachable, fails on CI."""
    url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3}, future=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa_exc.DBAPIError as error:
        message = f"PostgreSQL at {make_url(url).render_as_string(hide_password=True)} unreachable: {error}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    finally:
        engine.dispose()
    return url


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
