"""The Redis server for tests (TEST_REDIS_URL, by default the one on this machine). It is
shared with other users: each test works under its own key namespace and deletes only that."""
import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    return os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS_URL)


@contextmanager
def namespace(prefix: str) -> Iterator[str]:
    """A fresh key prefix ("test:<prefix>:<random>"); its keys are deleted afterwards."""
    name = f"test:{prefix}:{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        delete_keys(f"{name}*")


def delete_keys(pattern: str) -> None:
    client = redis.Redis.from_url(redis_url())
    try:
        for found in client.scan_iter(match=pattern, count=500):
            client.delete(found)
    finally:
        client.close()


def keys(pattern: str) -> list:
    client = redis.Redis.from_url(redis_url())
    try:
        return sorted(key.decode() for key in client.scan_iter(match=pattern, count=500))
    finally:
        client.close()
