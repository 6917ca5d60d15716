"""Conversations survive a restart: UrlSQLTrackerStore on a SQLite file and on the local PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Tuple

import pytest
import sqlalchemy as sa
from rasa.core.tracker_store import FailSafeTrackerStore, SQLTrackerStore, TrackerStore, create_tracker_store
from rasa.shared.core.constants import ACTION_LISTEN_NAME, ACTION_SESSION_START_NAME
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import (
    ActionExecuted,
    ActiveLoop,
    BotUttered,
    Event,
    SessionStarted,
    SlotSet,
    UserUttered,
)
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.utils.endpoints import read_endpoint_config
from sqlalchemy.engine import make_url

from lakala_server.tracker_store import ConversationChanged, UrlSQLTrackerStore
from tests.postgres import postgres_schema

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def domain() -> Domain:
    return Domain.load(str(REPO_ROOT / "domain.yml"))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rasa's own schema setting would override the URL's search_path.
    monkeypatch.delenv("POSTGRESQL_SCHEMA", raising=False)
    monkeypatch.delenv("TRACKER_DB_URL", raising=False)
    monkeypatch.setenv("TRACKER_RETENTION_DAYS", "0")  # these conversations are dated 1970


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_conversations_older_than_the_retention_are_deleted(
    domain: Domain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    def run(url: str) -> None:
        monkeypatch.setenv("TRACKER_DB_URL", url)
        now = time.time()
        keeper = UrlSQLTrackerStore(domain=domain)
        save(keeper, new_tracker(domain, "old", lookup_conversation(now - 40 * 86400)))
        save(keeper, new_tracker(domain, "recent", lookup_conversation(now - 10 * 86400)))
        keeper.engine.dispose()
        monkeypatch.setenv("TRACKER_RETENTION_DAYS", "30")
        store = UrlSQLTrackerStore(domain=domain)  # a (re)started server purges at once
        try:
            assert retrieve(store, "old") is None
            assert retrieve(store, "recent") is not None
            assert store.purge(30) == 0
            assert store.purge(5) == 1  # the same rule for any age
            assert retrieve(store, "recent") is None
        finally:
            store.engine.dispose()

    if backend == "sqlite":
        run(f"sqlite:///{tmp_path / 'tracker.db'}")
        return
    with postgres_schema(request.getfixturevalue("postgres_base_url"), "test_retention") as (_, url):
        run(url)


@pytest.fixture()
def make_store(domain: Domain) -> Iterator[Callable[[], UrlSQLTrackerStore]]:
    """A new store each call, as a restarted server would create; engines are disposed afterwards."""
    created: list[UrlSQLTrackerStore] = []

    def factory() -> UrlSQLTrackerStore:
        store = UrlSQLTrackerStore(domain=domain)
        created.append(store)
        return store

    yield factory
    for store in created:
        store.engine.dispose()


# --- PostgreSQL (as in test_registry.py) ------------------------------------------------------------------


def count_events(url: str, table: str, sender_id: str) -> int:
    engine = sa.create_engine(url, future=True)
    try:
        with engine.connect() as conn:
            query = sa.text(f"SELECT count(*) FROM {table} WHERE sender_id = :sender")
            return int(conn.execute(query, {"sender": sender_id}).scalar_one())
    finally:
        engine.dispose()


# --- conversations --------------------------------------------------------------------------------------------


def lookup_conversation(start: float) -> list[Event]:
    """A verified terminal lookup, as Rasa records it; explicit timestamps keep the order certain."""
    clock = iter(start + step for step in range(100))
    events: list[Event] = [
        ActionExecuted(ACTION_SESSION_START_NAME, timestamp=next(clock)),
        SessionStarted(timestamp=next(clock)),
        ActionExecuted(ACTION_LISTEN_NAME, timestamp=next(clock)),
        UserUttered(
            "查一下终端k730-6118",
            intent={"name": "check_terminal_status", "confidence": 0.97},
            entities=[{"entity": "terminal_id", "value": "k730-6118", "start": 5, "end": 14}],
            timestamp=next(clock),
        ),
        ActionExecuted("terminal_status_form", timestamp=next(clock)),
        ActiveLoop("terminal_status_form", timestamp=next(clock)),
        SlotSet("terminal_id", "K7306118", timestamp=next(clock)),
        SlotSet("requested_slot", "phone_tail", timestamp=next(clock)),
        BotUttered("为了核实身份，请输入该终端登记手机号的后4位。", {"buttons": None}, timestamp=next(clock)),
        ActionExecuted(ACTION_LISTEN_NAME, timestamp=next(clock)),
        UserUttered("后四位是多少不告诉你", intent={"name": "inform", "confidence": 0.8}, timestamp=next(clock)),
        ActionExecuted("terminal_status_form", timestamp=next(clock)),
        SlotSet("phone_tail", "verified", timestamp=next(clock)),
        SlotSet("verified_terminal", "K7306118", timestamp=next(clock)),
        SlotSet("verify_failures", 1.0, timestamp=next(clock)),
        ActiveLoop(None, timestamp=next(clock)),
        SlotSet("requested_slot", None, timestamp=next(clock)),
        ActionExecuted("action_terminal_status", timestamp=next(clock)),
        ActionExecuted(ACTION_LISTEN_NAME, timestamp=next(clock)),
    ]
    return events


def new_tracker(domain: Domain, sender_id: str, events: list[Event]) -> DialogueStateTracker:
    return DialogueStateTracker.from_events(sender_id, events, slots=domain.slots)


def save(store: TrackerStore, tracker: DialogueStateTracker) -> None:
    asyncio.run(store.save(tracker))


def retrieve(store: TrackerStore, sender_id: str) -> DialogueStateTracker | None:
    return asyncio.run(store.retrieve(sender_id))


def as_dicts(events: Any) -> list[dict[str, Any]]:
    return [event.as_dict() for event in events]


def latest_session(events: Any) -> list[Event]:
    """What Rasa reads back: the events from the latest SessionStarted on (action_session_start is before it)."""
    events = list(events)
    starts = [index for index, event in enumerate(events) if isinstance(event, SessionStarted)]
    return events[starts[-1] :] if starts else events


def assert_same_conversation(restored: DialogueStateTracker | None, original: DialogueStateTracker) -> None:
    assert restored is not None, "the conversation was lost"
    assert restored.sender_id == original.sender_id
    assert as_dicts(restored.events) == as_dicts(latest_session(original.events))
    assert len(restored.events) == len(original.events) - 1
    assert restored.current_slot_values() == original.current_slot_values()
    assert restored.get_slot("terminal_id") == "K7306118"
    assert restored.get_slot("phone_tail") == "verified"
    assert restored.get_slot("verified_terminal") == "K7306118"
    assert restored.get_slot("verify_failures") == 1.0
    assert restored.get_slot("policy_deregistration_working_days") == "15"
    assert restored.active_loop_name is None
    assert restored.latest_message is not None and restored.latest_message.intent["name"] == "inform"
    assert restored.latest_action_name == ACTION_LISTEN_NAME


def check_survives_restart(domain: Domain, make_store: Callable[[], UrlSQLTrackerStore]) -> str:
    """Saves a conversation, restarts (a new store), reads it back, continues it, restarts again."""
    sender_id = f"merchant-{uuid.uuid4().hex[:8]}"
    start = time.time() - 600
    original = new_tracker(domain, sender_id, lookup_conversation(start))
    save(make_store(), original)

    restored = retrieve(make_store(), sender_id)
    assert_same_conversation(restored, original)
    assert retrieve(make_store(), "someone-else") is None

    # The merchant comes back: the follow-up is appended once, not the whole conversation again.
    assert restored is not None
    restored.update(
        UserUttered("押金能退吗", intent={"name": "ask_deposit", "confidence": 0.99}, timestamp=start + 200)
    )
    restored.update(ActionExecuted("action_terminal_followup", timestamp=start + 201))
    restored.update(SlotSet("deregistration_confirmed", False, timestamp=start + 202))
    save(make_store(), restored)

    again = retrieve(make_store(), sender_id)
    assert again is not None
    assert as_dicts(again.events) == as_dicts(restored.events)
    assert len(again.events) == len(original.events) - 1 + 3
    assert again.get_slot("deregistration_confirmed") is False
    assert again.latest_message.intent["name"] == "ask_deposit"
    return sender_id


# --- tests --------------------------------------------------------------------------------------------------


def test_sqlite_file_survives_restart(
    domain: Domain, make_store: Callable[[], UrlSQLTrackerStore], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db_file = tmp_path / "chats" / "tracker.db"
    db_file.parent.mkdir()
    url = f"sqlite:///{db_file}"
    monkeypatch.setenv("TRACKER_DB_URL", url)
    monkeypatch.chdir(tmp_path)  # and nothing is written to the default place
    sender_id = check_survives_restart(domain, make_store)
    assert count_events(url, "events", sender_id) == len(lookup_conversation(0)) + 3
    assert not (tmp_path / "var").exists()


def test_postgresql_survives_restart(
    domain: Domain,
    make_store: Callable[[], UrlSQLTrackerStore],
    monkeypatch: pytest.MonkeyPatch,
    postgres_base_url: str,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    with postgres_schema(postgres_base_url, "test_tracker") as (schema, url):
        monkeypatch.setenv("TRACKER_DB_URL", url)
        store = make_store()
        assert store.engine.dialect.name == "postgresql"
        sender_id = check_survives_restart(domain, make_store)
        # Stored in the URL's own schema, i.e. the URL was used as given (search_path option included).
        assert count_events(postgres_base_url, f'"{schema}".events', sender_id) == len(lookup_conversation(0)) + 3
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("unset", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_default_is_var_tracker_db_in_the_working_directory(
    domain: Domain,
    make_store: Callable[[], UrlSQLTrackerStore],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    unset: str | None,
) -> None:
    if unset is not None:
        monkeypatch.setenv("TRACKER_DB_URL", unset)
    monkeypatch.chdir(tmp_path)
    assert not (tmp_path / "var").exists()
    store = make_store()
    assert store.engine.dialect.name == "sqlite"
    assert make_url(str(store.engine.url)).database == "var/tracker.db"
    assert (tmp_path / "var" / "tracker.db").is_file()
    sender_id = check_survives_restart(domain, make_store)
    assert count_events(f"sqlite:///{tmp_path / 'var' / 'tracker.db'}", "events", sender_id) > 0


def test_endpoints_yml_sends_the_action_server_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTION_SERVER_TOKEN", "token-from-var-secrets-env")
    config = read_endpoint_config(str(REPO_ROOT / "endpoints.yml"), "action_endpoint")
    assert config.token == "token-from-var-secrets-env"  # expanded, not the literal ${...}


def test_endpoints_yml_selects_this_store(domain: Domain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'endpoint.db'}"
    monkeypatch.setenv("TRACKER_DB_URL", url)
    monkeypatch.setenv("ACTION_SERVER_TOKEN", "a-token-make-run-would-generate")  # endpoints.yml reads it
    config = read_endpoint_config(str(REPO_ROOT / "endpoints.yml"), "tracker_store")
    store = create_tracker_store(config, domain)
    try:
        assert isinstance(store, UrlSQLTrackerStore)  # async, so Rasa uses it without a wrapper
        assert str(store.engine.url) == url
        tracker = new_tracker(domain, "via-endpoints", lookup_conversation(time.time() - 600))
        save(store, tracker)
    finally:
        store.engine.dispose()
    assert (tmp_path / "endpoint.db").is_file()
    assert count_events(url, "events", "via-endpoints") == len(tracker.events)


def stored_rows(url: str) -> list[tuple[str, str, dict]]:
    """(sender, type, the decoded data column); the store writes the same JSON values as
    Rasa's, encoded more compactly (orjson: no spaces, Chinese unescaped)."""
    engine = sa.create_engine(url, future=True)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT sender_id, type_name, data FROM events ORDER BY id")
            rows = [tuple(row) for row in conn.execute(query)]
    finally:
        engine.dispose()
    decoded = []
    for sender, kind, data in rows:
        values = json.loads(data)
        values.pop("timestamp", None)  # events Rasa creates itself carry the current time
        decoded.append((sender, kind, values))
    return decoded


def save_in_steps(domain: Domain, store: TrackerStore) -> None:
    """One conversation saved the way the server saves it: several saves of the same
    tracker object per message, and a new session starting in the middle."""
    start = 1_700_000_000.0
    save(store, new_tracker(domain, "regular", lookup_conversation(start)))
    tracker = retrieve(store, "regular")
    assert tracker is not None
    for step in range(3):
        question = UserUttered(f"问题{step}", intent={"name": "faq", "confidence": 0.9}, timestamp=start + 300 + step)
        tracker.update(question)
        save(store, tracker)
        tracker.update(ActionExecuted("utter_faq", timestamp=start + 300.5 + step))
        save(store, tracker)
    tracker.update(ActionExecuted(ACTION_SESSION_START_NAME, timestamp=start + 400))
    tracker.update(SessionStarted(timestamp=start + 401))
    save(store, tracker)
    tracker.update(ActionExecuted(ACTION_LISTEN_NAME, timestamp=start + 402))
    save(store, tracker)
    later = retrieve(store, "regular")
    assert later is not None
    later.update(UserUttered("押金能退吗", intent={"name": "ask_deposit", "confidence": 0.9}, timestamp=start + 403))
    save(store, later)
    # A new merchant: the server creates the tracker, then saves it again after the answer.
    fresh = asyncio.run(store.get_or_create_tracker("fresh"))
    fresh.update(UserUttered("你好", intent={"name": "greet", "confidence": 0.9}, timestamp=start + 500))
    save(store, fresh)
    fresh.update(ActionExecuted("utter_greet", timestamp=start + 501))
    save(store, fresh)


def test_saves_write_the_same_rows_as_rasas_own_store(
    domain: Domain, make_store: Callable[[], UrlSQLTrackerStore], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The store remembers how many events of a tracker it has read or written instead
    of counting rows before each save; the database gets Rasa's rows, except that a tracker
    saved again after a new session began appends only its new events (Rasa's store then
    writes the earlier session a second time, counting only the new session's rows)."""
    ours = f"sqlite:///{tmp_path / 'ours.db'}"
    monkeypatch.setenv("TRACKER_DB_URL", ours)
    save_in_steps(domain, make_store())
    rasas = SQLTrackerStore(domain=domain, dialect="sqlite", db=str(tmp_path / "rasa.db"))
    try:
        save_in_steps(domain, rasas)
    finally:
        rasas.engine.dispose()
    rows = stored_rows(ours)
    assert len(rows) > len(lookup_conversation(0))
    rasa_rows = stored_rows(f"sqlite:///{tmp_path / 'rasa.db'}")
    second_start = [i for i, row in enumerate(rasa_rows) if row[1] == "session_started"][1]
    follow_up = max(i for i, row in enumerate(rasa_rows) if row[2].get("text") == "押金能退吗")
    repeated = rasa_rows[second_start + 2 : follow_up]
    assert repeated == rasa_rows[3 : second_start + 2]  # Rasa's second copy, after the 3 rows of the new session
    assert rows == rasa_rows[: second_start + 2] + rasa_rows[follow_up:]


def test_sqlite_uses_write_ahead_logging(
    make_store: Callable[[], UrlSQLTrackerStore], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRACKER_DB_URL", f"sqlite:///{tmp_path / 'tracker.db'}")
    with make_store().engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_a_new_conversation_costs_one_read_and_one_write(
    domain: Domain, make_store: Callable[[], UrlSQLTrackerStore], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Through the wrapper the server puts around the store: a first message is one SELECT
    and one transaction (the state row and one INSERT of the events), without counting rows,
    and every event is stored."""
    monkeypatch.setenv("TRACKER_DB_URL", f"sqlite:///{tmp_path / 'tracker.db'}")
    store = make_store()
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2].strip()))
    commits: list[object] = []
    sa.event.listen(store.engine, "commit", commits.append)
    served = FailSafeTrackerStore(store)

    tracker = asyncio.run(served.get_or_create_tracker("first-visit"))
    assert [type(e).__name__ for e in tracker.events] == ["ActionExecuted"]
    assert tracker.latest_action_name == ACTION_LISTEN_NAME
    conversation = lookup_conversation(time.time() + 1)  # after the first action_listen, as in the server
    for event in conversation:
        tracker.update(event)
    save(served, tracker)

    selects = [s for s in statements if s.upper().startswith("SELECT")]
    inserts = [s for s in statements if s.upper().startswith("INSERT")]
    assert len(selects) == 1 and len(commits) == 1
    assert [s.split("(")[0].split()[-1] for s in inserts] == ["lakala_conversation_state", "events"]
    assert not any("count(" in s.lower() for s in statements)
    restored = retrieve(make_store(), "first-visit")
    assert restored is not None
    assert as_dicts(restored.events) == as_dicts(latest_session(tracker.events))
    assert count_events(f"sqlite:///{tmp_path / 'tracker.db'}", "events", "first-visit") == 1 + len(conversation)


# --- saves from stale reads, and databases from before the state row ------------------------------------------


def with_backend(backend: str, tmp_path: Path, request: pytest.FixtureRequest, prefix: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'tracker.db'}"
        return
    with postgres_schema(request.getfixturevalue("postgres_base_url"), prefix) as (_, url):
        yield url

@contextmanager
def two_servers(domain: Domain) -> Iterator[Tuple[UrlSQLTrackerStore, UrlSQLTrackerStore]]:
    """Two stores on TRACKER_DB_URL with their own engines, as two server processes have."""
    first, second = UrlSQLTrackerStore(domain=domain), UrlSQLTrackerStore(domain=domain)
    try:
        yield first, second
    finally:
        first.engine.dispose()
        second.engine.dispose()



def rows_of(store: UrlSQLTrackerStore, sender_id: str) -> list[tuple[str, str]]:
    with store.engine.connect() as connection:
        query = sa.text("SELECT type_name, data FROM events WHERE sender_id = :s ORDER BY id")
        return [tuple(row) for row in connection.execute(query, {"s": sender_id})]


def turn(text: str, start: float) -> list[Event]:
    return [UserUttered(text, intent={"name": "faq", "confidence": 0.9}, timestamp=start),
            ActionExecuted("utter_faq", timestamp=start + 0.1),
            BotUttered(f"答{text}", timestamp=start + 0.2),
            ActionExecuted(ACTION_LISTEN_NAME, timestamp=start + 0.3)]


def both_save(first: UrlSQLTrackerStore, second: UrlSQLTrackerStore, a: DialogueStateTracker,
              b: DialogueStateTracker, at_once: bool) -> list[str]:
    """Saves `a` with `first` and `b` with `second` (one after the other, or from two threads at
    the same moment); the outcome of each, in that order."""
    outcomes = ["", ""]

    def run(index: int, store: UrlSQLTrackerStore, tracker: DialogueStateTracker, gate: Any) -> None:
        if gate is not None:
            gate.wait()
        try:
            save(store, tracker)
            outcomes[index] = "saved"
        except ConversationChanged:
            outcomes[index] = "refused"

    if not at_once:
        run(0, first, a, None)
        run(1, second, b, None)
        return outcomes
    gate = threading.Barrier(2)
    threads = [threading.Thread(target=run, args=(i, s, t, gate)) for i, s, t in ((0, first, a), (1, second, b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


@pytest.mark.parametrize("at_once", [False, True], ids=["in-turn", "at-once"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_servers_saving_the_same_read_one_is_refused(
    domain: Domain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest,
    backend: str, at_once: bool,
) -> None:
    """Two stores with their own engines (two server processes) read the same conversation and
    both answer: one save wins, the other raises ConversationChanged and writes nothing."""
    for url in with_backend(backend, tmp_path, request, "test_stale"):
        monkeypatch.setenv("TRACKER_DB_URL", url)
        with two_servers(domain) as (first, second):
            start = time.time() - 600
            tracker = asyncio.run(first.get_or_create_tracker("shared"))
            for event in lookup_conversation(start)[1:]:
                tracker.update(event)
            save(first, tracker)
            before = rows_of(first, "shared")

            a, b = retrieve(first, "shared"), retrieve(second, "shared")
            assert a is not None and b is not None
            for event in turn("押金能退吗", start + 100):
                a.update(event)
            for event in turn("要多久", start + 100):
                b.update(event)
            outcomes = both_save(first, second, a, b, at_once)
            assert sorted(outcomes) == ["refused", "saved"]
            winner = a if outcomes[0] == "saved" else b
            winner_text = winner.latest_message.text
            rows = rows_of(first, "shared")
            assert rows[: len(before)] == before and len(rows) == len(before) + 4
            assert json.loads(rows[len(before)][1])["text"] == winner_text

            # The loser reads again and carries on; the winner's old tracker is now the stale one.
            loser_store, winner_store = (second, first) if outcomes[0] == "saved" else (first, second)
            again = retrieve(loser_store, "shared")
            assert again is not None and again.latest_message.text == winner_text
            for event in turn("怎么注销", start + 200):
                again.update(event)
            save(loser_store, again)
            for event in turn("晚到的", start + 300):
                winner.update(event)
            with pytest.raises(ConversationChanged):
                save(winner_store, winner)
            texts = [json.loads(data).get("text") for kind, data in rows_of(first, "shared") if kind == "user"]
            assert texts[-2:] == [winner_text, "怎么注销"]
            assert len(rows_of(first, "shared")) == len(before) + 8


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_servers_starting_the_same_new_conversation_one_is_refused(
    domain: Domain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    for url in with_backend(backend, tmp_path, request, "test_stale_new"):
        monkeypatch.setenv("TRACKER_DB_URL", url)
        with two_servers(domain) as (first, second):
            start = time.time() - 600
            a = asyncio.run(first.get_or_create_tracker("newcomer"))
            b = asyncio.run(second.get_or_create_tracker("newcomer"))
            for tracker, text in ((a, "你好"), (b, "在吗")):
                for event in [ActionExecuted(ACTION_SESSION_START_NAME, timestamp=start),
                              SessionStarted(timestamp=start + 0.01),
                              ActionExecuted(ACTION_LISTEN_NAME, timestamp=start + 0.02), *turn(text, start + 1)]:
                    tracker.update(event)
            save(first, a)
            with pytest.raises(ConversationChanged):
                save(second, b)
            texts = [json.loads(data).get("text") for kind, data in rows_of(first, "newcomer") if kind == "user"]
            assert texts == ["你好"]
            assert len(rows_of(first, "newcomer")) == len(a.events)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_conversation_stored_before_the_state_row_is_read_and_continued(
    domain: Domain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    """A database written before this change (Rasa's events table, no state rows) keeps working:
    the conversation is read the old way and gets its row with its next save."""
    for url in with_backend(backend, tmp_path, request, "test_legacy"):
        monkeypatch.setenv("TRACKER_DB_URL", url)
        old = SQLTrackerStore(domain=domain, host=url)  # Rasa's own store: no state table
        start = time.time() - 600
        original = new_tracker(domain, "regular", lookup_conversation(start))
        try:
            save(old, original)
            assert not sa.inspect(old.engine).has_table("lakala_conversation_state")
        finally:
            old.engine.dispose()
        with two_servers(domain) as (first, second):
            restored = retrieve(first, "regular")
            assert_same_conversation(restored, original)
            stale = retrieve(second, "regular")
            assert restored is not None and stale is not None
            for event in turn("押金能退吗", start + 100):
                restored.update(event)
            save(first, restored)
            with first.engine.connect() as connection:
                versions = connection.execute(sa.text("SELECT version FROM lakala_conversation_state")).scalars()
                assert versions.all() == [1]
            for event in turn("要多久", start + 100):
                stale.update(event)
            with pytest.raises(ConversationChanged):
                save(second, stale)
            again = retrieve(second, "regular")
            assert again is not None
            assert as_dicts(again.events) == as_dicts(restored.events)
            assert len(rows_of(first, "regular")) == len(original.events) + 4
