"""One replica of the Rasa server in tests/cluster/test_turn_race.py: an OS process that handles
turns of a conversation the way Rasa's MessageProcessor does, under the conversation's lock:
retrieve the tracker, add the turn's events, work a little, save.

`serve` runs in a process of its own (multiprocessing, spawn) and answers commands sent on a pipe.
"""
from __future__ import annotations

import asyncio
import os
import time
import warnings
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[2]
# Saves of one turn before it counts as refused (a store may refuse a save from a stale read).
SAVE_ATTEMPTS = 3


def serve(conn: Connection, env: Dict[str, str]) -> None:
    os.environ.update(env)
    warnings.simplefilter("ignore")  # Rasa's deprecation notices, once per replica
    os.environ.pop("POSTGRESQL_SCHEMA", None)  # Rasa's schema setting would override the URL's
    loop = asyncio.new_event_loop()  # one loop for the process's life: one Redis client
    replica = Replica(env)
    conn.send("imported")
    while True:
        command = conn.recv()
        if command is None:
            return
        name, kwargs = command
        conn.send(loop.run_until_complete(getattr(replica, name)(**kwargs)))


class Replica:
    def __init__(self, env: Dict[str, str]) -> None:
        from rasa.shared.core.domain import Domain

        self.env = env
        self.domain = Domain.load(str(ROOT / "domain.yml"))
        self.stores: Dict[str, Tuple[Any, Any]] = {}

    async def prepare(self) -> str:
        """Both pairs of stores: ours, and Rasa's stock RedisLockStore with its SQLTrackerStore."""
        from rasa.core.lock_store import RedisLockStore
        from rasa.core.tracker_store import SQLTrackerStore
        from redis.connection import parse_url

        from lakala_server.lock_store import ConversationLockStore
        from lakala_server.tracker_store import UrlSQLTrackerStore

        self.stores["ours"] = (
            ConversationLockStore(key_prefix=self.env["RACE_KEY_PREFIX"]),
            UrlSQLTrackerStore(domain=self.domain),
        )
        redis = parse_url(self.env["REDIS_URL"])
        self.stores["stock"] = (
            RedisLockStore(host=redis.get("host", "localhost"), port=redis.get("port", 6379), db=redis.get("db", 0),
                           key_prefix=self.env["RACE_STOCK_KEY_PREFIX"]),
            SQLTrackerStore(domain=self.domain, host=self.env["TRACKER_DB_URL"]),
        )
        async with self.stores["ours"][0].lock(f"{self.env['RACE_KEY_PREFIX']}-warm-up"):
            pass  # the Redis connection is open before the first race, as in a running server
        return "ready"

    async def race(self, stores: str, sender: str, name: str, start_at: float, turns: int, work_s: float,
                   wait_s: float, lifetime_s: float, turn_timeout_s: float) -> List[Dict[str, Any]]:
        """`turns` turns one after the other, the first at `start_at` (epoch seconds)."""
        from rasa.core.lock_store import LockError

        lock_store, tracker_store = self.stores[stores]
        await asyncio.sleep(max(0.0, start_at - time.time()))
        results = []
        for number in range(turns):
            turn = f"{name}t{number}"
            arrival = time.time_ns()
            refused, outcome, ticket = 0, "stored", None
            try:
                refused, stored, ticket = await asyncio.wait_for(
                    self.turn(lock_store, tracker_store, sender, turn, work_s, wait_s, lifetime_s), turn_timeout_s)
                if not stored:
                    outcome = "refused"
            except asyncio.TimeoutError:
                outcome = "timeout"
            except LockError:
                outcome = "lock error"
            results.append({"turn": turn, "arrival": arrival, "outcome": outcome, "refused": refused,
                            "ticket": ticket})
        return results

    async def turn(self, lock_store: Any, tracker_store: Any, sender: str, turn: str, work_s: float,
                   wait_s: float, lifetime_s: float) -> Tuple[int, bool, int]:
        from rasa.shared.core.trackers import DialogueStateTracker

        refused = 0
        async with lock_store.lock(sender, lock_lifetime=lifetime_s, wait_time_in_seconds=wait_s) as held:
            ticket = held.tickets[0].number if held.tickets else -1
            for _ in range(SAVE_ATTEMPTS):
                tracker: Optional[DialogueStateTracker] = await tracker_store.retrieve(sender)
                if tracker is None:
                    tracker = DialogueStateTracker(sender, self.domain.slots)
                for event in turn_events(turn):
                    tracker.update(event)
                await asyncio.sleep(work_s)  # the NLU, the policies, an action call
                try:
                    await tracker_store.save(tracker)
                except Exception:  # noqa: BLE001 - a refused save is retried, whatever its class
                    refused += 1
                    continue
                return refused, True, ticket
        return refused, False, ticket


def turn_events(turn: str) -> List[Any]:
    """One turn's events, each tagged with the turn and its place in it."""
    from rasa.shared.core.constants import ACTION_LISTEN_NAME
    from rasa.shared.core.events import ActionExecuted, BotUttered, UserUttered

    def tag(seq: int) -> Dict[str, Any]:
        return {"race_turn": turn, "race_seq": seq}

    return [
        UserUttered(f"race {turn}", intent={"name": "greet", "confidence": 1.0}, metadata=tag(0)),
        ActionExecuted("utter_greet", metadata=tag(1)),
        BotUttered(f"reply to {turn}", metadata=tag(2)),
        ActionExecuted(ACTION_LISTEN_NAME, metadata=tag(3)),
    ]


EVENTS_PER_TURN = 4
