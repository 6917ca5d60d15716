"""The local Redis server for tests (TEST_REDIS_URL, by default the one on this machine). It is
shared with other work: tests use keys of their own and delete only those. When it does not
answer, tests that need it fail on CI (`CI` set) and are skipped elsewhere, with the reason."""
import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest
import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def reachable_redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS_URL)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as error:
        reason = f"Redis at {url} unreachable: {error}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the Redis tests must run)")
        pytest.skip(f"{reason}; start it or set TEST_REDIS_URL (CI fails here)")
    return url


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def delete_matching(url: str, pattern: str) -> int:
    """Deletes this test's keys (a pattern naming only them); how many there were."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=pattern, count=500))
    if keys:
        client.delete(*keys)
    return len(keys)


def redis_url() -> str:
    """The test Redis server's URL (see `reachable_redis_url`)."""
    return reachable_redis_url()


@contextmanager
def namespace(prefix: str) -> Iterator[str]:
    """A fresh key prefix ("test:<prefix>:<random>"); its keys are deleted afterwards."""
    name = f"test:{prefix}:{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        delete_keys(f"{name}*")


def delete_keys(pattern: str) -> int:
    return delete_matching(redis_url(), pattern)


def keys(pattern: str) -> list:
    client = redis.Redis.from_url(redis_url())
    try:
        return sorted(key.decode() for key in client.scan_iter(match=pattern, count=500))
    finally:
        client.close()
