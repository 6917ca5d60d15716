"""The conversation lock on the real Redis: turns run one at a time in arrival order across
replicas, a replica killed while it holds or waits does not block the others for longer than
its lease, a turn that gives up leaves at once, nothing stays in Redis, and a Redis failure is
an error rather than a hang or an unlocked turn. Without REDIS_URL it is Rasa's in-memory store."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator, List

import pytest
import redis
import redis.asyncio as aioredis
from rasa.core.lock_store import InMemoryLockStore, LockError, LockStore
from rasa.utils.endpoints import read_endpoint_config

from lakala_server import config, lock_store
from lakala_server.lock_store import ConversationLockStore, LockStoreUnavailable
from tests.support.redis_server import keys, namespace, redis_url
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
# Short leases keep the tests quick; a real waiter's lease is at least 5 s.
WAITER_LEASE_S = 1.0


@pytest.fixture()
def prefix() -> Iterator[str]:
    with namespace("lock") as name:
        yield name


@pytest.fixture(autouse=True)
def short_waiter_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_store, "MIN_WAITER_LEASE_SECONDS", WAITER_LEASE_S)


def replica(prefix: str, url: str = "") -> ConversationLockStore:
    """A store with a Redis connection of its own, as another replica would have."""
    clients: dict = {}

    def client() -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        if loop not in clients:
            clients[loop] = aioredis.Redis.from_url(url or redis_url(), socket_timeout=2, socket_connect_timeout=2)
        return clients[loop]

    return ConversationLockStore(redis_client=client, key_prefix=prefix)


def test_turns_of_one_conversation_run_one_at_a_time_in_arrival_order_across_replicas(prefix: str) -> None:
    replicas = [replica(prefix) for _ in range(3)]
    ran: List[str] = []

    async def turn(store: ConversationLockStore, name: str, go: asyncio.Event) -> None:
        async with store.lock("alice", lock_lifetime=10, wait_time_in_seconds=1):
            ran.append(f"{name} starts")
            await go.wait()
            await asyncio.sleep(0.01)
            ran.append(f"{name} ends")

    async def scenario() -> None:
        go = asyncio.Event()
        tasks = []
        for number in range(9):
            tasks.append(asyncio.create_task(turn(replicas[number % 3], f"t{number}", go)))
            while queued(prefix) < number + 1:  # it has arrived: the next one comes after it
                await asyncio.sleep(0.005)
        go.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert ran == [f"t{n} {step}" for n in range(9) for step in ("starts", "ends")]
    assert keys(f"{prefix}*") == []  # the last turn out leaves nothing behind


def test_other_conversations_do_not_wait(prefix: str) -> None:
    store = replica(prefix)

    async def scenario() -> None:
        async with store.lock("alice", lock_lifetime=10):
            async with store.lock("bob", lock_lifetime=10):
                pass

    asyncio.run(asyncio.wait_for(scenario(), 10))


HOLD_OR_WAIT = """
import asyncio, sys
import redis.asyncio as aioredis
from lakala_server import lock_store

lock_store.MIN_WAITER_LEASE_SECONDS = {lease}
client = None

def redis_client():
    global client
    client = client or aioredis.Redis.from_url({url!r})
    return client

async def main():
    store = lock_store.ConversationLockStore(redis_client=redis_client, key_prefix={prefix!r})
    print("asking", flush=True)
    async with store.lock("alice", lock_lifetime={lifetime}, wait_time_in_seconds=0.2):
        print("holding", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


def start_replica(prefix: str, lifetime: float) -> subprocess.Popen:
    code = textwrap.dedent(HOLD_OR_WAIT).format(lease=WAITER_LEASE_S, url=redis_url(), prefix=prefix, lifetime=lifetime)
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.stdout.readline().strip() == "asking"
    return process


def queued(prefix: str) -> int:
    client = redis.Redis.from_url(redis_url())
    try:
        return client.zcard(f"{prefix}:alice:queue")
    finally:
        client.close()


def wait_until(condition: Any, timeout: float = 30) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.05)

    asyncio.run(asyncio.wait_for(poll(), timeout))


def kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_a_replica_killed_while_holding_or_waiting_blocks_the_turns_behind_only_until_its_lease_ends(
    prefix: str,
) -> None:
    holder = start_replica(prefix, lifetime=3)
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "holding"
        waiter = start_replica(prefix, lifetime=3)
        wait_until(lambda: queued(prefix) == 2)
        store = replica(prefix)

        async def turn(timeout: float) -> None:
            async def locked() -> None:
                async with store.lock("alice", lock_lifetime=10, wait_time_in_seconds=0.2):
                    pass

            await asyncio.wait_for(locked(), timeout)

        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(turn(0.5))  # the holder is alive: nobody else runs
        kill(holder)
        kill(waiter)  # dies while waiting: its ticket must not block the next turn for ever
        asyncio.run(turn(30))  # after the holder's lifetime and the waiter's lease
        wait_until(lambda: keys(f"{prefix}*") == [])
    finally:
        for process in (holder, waiter):
            if process and process.poll() is None:
                kill(process)


def test_a_turn_that_gives_up_waiting_leaves_the_queue_at_once(prefix: str) -> None:
    first, second, third = replica(prefix), replica(prefix), replica(prefix)
    ran: List[str] = []

    async def turn(store: ConversationLockStore, name: str, work: float) -> None:
        async with store.lock("alice", lock_lifetime=30, wait_time_in_seconds=5):
            ran.append(name)
            await asyncio.sleep(work)

    async def scenario() -> None:
        holding = asyncio.create_task(turn(first, "first", 0.3))
        await asyncio.sleep(0.1)
        giving_up = asyncio.create_task(turn(second, "second", 0))
        await asyncio.sleep(0.05)
        behind = asyncio.create_task(turn(third, "third", 0))
        await asyncio.sleep(0.05)
        giving_up.cancel()  # the request was cancelled, say
        await holding
        # Woken when `first` releases, not after the lease of the turn that gave up.
        await asyncio.wait_for(behind, 5)  # its lease would be 15 s
        with pytest.raises(asyncio.CancelledError):
            await giving_up

    asyncio.run(scenario())
    assert ran == ["first", "third"]


def test_keys_expire_with_the_last_lease(prefix: str) -> None:
    store = replica(prefix)
    ttls: List[int] = []

    async def scenario() -> None:
        async with store.lock("alice", lock_lifetime=2):
            client = redis.Redis.from_url(redis_url())
            ttls.extend(client.pttl(key) for key in keys(f"{prefix}*"))
            client.close()

    asyncio.run(scenario())
    assert len(ttls) == 3 and all(0 < ttl <= 3000 for ttl in ttls), ttls
    assert keys(f"{prefix}*") == []


def test_a_redis_failure_while_locking_is_an_error_not_a_hang_nor_an_unlocked_turn(prefix: str) -> None:
    store = replica(prefix, url=f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    ran: List[bool] = []

    async def scenario() -> None:
        async with store.lock("alice"):
            ran.append(True)

    with pytest.raises(LockStoreUnavailable) as raised:
        asyncio.run(asyncio.wait_for(scenario(), 30))
    assert isinstance(raised.value, LockError)  # what Rasa's callers know
    assert "Redis failed while locking conversation 'alice'" in str(raised.value)
    assert ran == []


def test_without_redis_url_it_is_rasas_in_memory_lock_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("SANIC_WORKERS", raising=False)
    store = ConversationLockStore()
    assert isinstance(store, InMemoryLockStore) and not store.distributed
    ran: List[str] = []

    async def turn(name: str) -> None:
        async with store.lock("alice", wait_time_in_seconds=0.01):
            ran.append(f"{name} starts")
            await asyncio.sleep(0.01)
            ran.append(f"{name} ends")

    async def scenario() -> None:
        await asyncio.gather(turn("a"), turn("b"))

    asyncio.run(scenario())
    assert ran == ["a starts", "a ends", "b starts", "b ends"]
    assert store.conversation_locks == {}

    monkeypatch.setenv("SANIC_WORKERS", "2")  # workers that would not share their locks
    with pytest.raises(config.ConfigError, match="REDIS_URL"):
        ConversationLockStore()


def test_rasa_creates_it_from_endpoints_yml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTION_SERVER_TOKEN", "unused here")
    endpoint = read_endpoint_config(str(ROOT / "endpoints.yml"), "lock_store")
    monkeypatch.setenv("REDIS_URL", redis_url())
    store = LockStore.create(endpoint)
    assert isinstance(store, ConversationLockStore) and store.distributed
    monkeypatch.delenv("REDIS_URL")
    assert not LockStore.create(endpoint).distributed
