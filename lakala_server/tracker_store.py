"""Rasa's SQL tracker store, configured by one SQLAlchemy URL so conversations
survive a server restart on SQLite (default) or PostgreSQL, with phone tails
masked before they are written.

On SQLite, Rasa 3.6 opens a new connection for every query and commits in the
default rollback-journal mode, which syncs the file to disk twice per message.
Profiling under load found this one of the server's largest costs (bench/HISTORY.md). The store keeps its
connections open and uses write-ahead logging with synchronous=NORMAL, SQLite's
recommended setting for WAL: a committed message survives a crash of the server,
and the database stays consistent on power loss (the last messages can be lost).

Reading and writing a conversation run two statements compiled once for the
database's dialect, straight through the driver: building them through the ORM
on every message (Rasa's way) was a noticeable share of the time per message.

A message's cost does not grow with the conversation. Each conversation has a state row
(table lakala_conversation_state) written in the transaction that appends its events: a version,
where its window of recent events starts, and the prefix that stands for everything before the
window (SlotSet for every slot set by then, ConversationPaused if it was). Reading the latest
session returns that prefix followed by the window's events, never fewer than WINDOW_ACTIONS
applied actions: Rasa replays, featurizes and sends to the action server that much instead of
the whole session. A window starts only where the user speaks after an action_listen and no
loop (form) is active, so the rules (a few states each; tests/unit/test_tracker_store.py checks
the trained ones fit) and Rasa's own undoing of reverted turns and form steps see exactly the
states they would see in the full history (docs/tracker-window.md). Reading every session
(`fetch_events_from_all_sessions`) returns every event, as before. A conversation stored before
the state row existed is read the old way and gets its row on its next save.

A save refuses, rather than corrupts, a conversation someone else saved after it was read: the
state row's version is checked in the same transaction as the INSERT of the events, and a
ConversationChanged is raised with nothing written.

Conversations whose last event is older than TRACKER_RETENTION_DAYS (default 90; 0 keeps
everything) are deleted when the store starts, then at most once an hour in the background.
"""
import asyncio
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import sqlalchemy as sa
from rasa.core.brokers.broker import EventBroker
from rasa.core.tracker_store import SQLTrackerStore
from rasa.shared.core.constants import ACTION_LISTEN_NAME
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import (
    ActionExecuted,
    ConversationPaused,
    Event,
    SessionStarted,
    SlotSet,
    UserUttered,
)
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.shared.nlu.constants import INTENT_NAME_KEY
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import sessionmaker

from lakala_common.settings import private_sqlite_file
from lakala_server import config
from lakala_server.json_codec import dumps
from lakala_server.redaction import redact, redact_event_dict

DEFAULT_SQLITE_PATH = config.DEFAULT_TRACKER_DB_PATH
# How many of a tracker's events are already in the database (set on read and save).
STORED_EVENTS = "_lakala_stored_events"
# What the store read for a tracker (a Read): the version it must find when saving, and its window.
READ = "_lakala_read"
STATE_TABLE = "lakala_conversation_state"
# The fewest applied actions (each one state for the policy) a window keeps, four times the
# longest trained rule's states (tests/unit/test_tracker_window.py checks); it is cut again once
# it holds WINDOW_SLACK more, so a message's tracker stays about as short as the tenth message's.
WINDOW_ACTIONS = 12
WINDOW_SLACK = 8
EVENT_COLUMNS = ("sender_id", "type_name", "timestamp", "intent_name", "action_name", "data")
RETENTION_CHECK_SECONDS = 3600.0

logger = logging.getLogger(__name__)


def retention_days() -> float:
    """TRACKER_RETENTION_DAYS: how long a finished conversation is kept; 0 keeps them all."""
    return config.current().tracker_retention_days


class ConversationChanged(Exception):
    """The conversation was saved by someone else after this tracker was read; nothing was written."""

    def __init__(self, sender_id: str) -> None:
        super().__init__(f"conversation {sender_id!r} changed since it was read; the save was refused")
        self.sender_id = sender_id


@dataclass
class Read:
    """What a tracker was read from: the state row's version (None: no row yet), how many of
    its first events are the prefix, and the ids of the stored events after it, in order."""

    version: Optional[int]
    prefix_len: int = 0
    ids: List[int] = field(default_factory=list)


def state_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        STATE_TABLE,
        metadata,
        sa.Column("sender_id", sa.String(255), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("window_start", sa.Integer, nullable=False),  # the id of the window's first event
        sa.Column("prefix", sa.Text, nullable=False),  # JSON list of the prefix's events
    )


def tracker_db_url() -> str:
    url = config.current().tracker_db_url
    if url == f"sqlite:///{DEFAULT_SQLITE_PATH}":
        DEFAULT_SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
    return url


class UrlSQLTrackerStore(SQLTrackerStore):
    """SQLTrackerStore whose database comes from TRACKER_DB_URL, reading a window of each
    conversation and refusing saves made from a stale read."""

    windowed = True

    def __init__(
        self,
        domain: Optional[Domain] = None,
        event_broker: Optional[EventBroker] = None,
        **kwargs: Any,
    ) -> None:
        self._url = tracker_db_url()
        private_sqlite_file(self._url)
        kwargs.pop("host", None)
        super().__init__(domain=domain, event_broker=event_broker, **kwargs)
        # Senders this store just found no events for, with the version of their state row (None:
        # no row): a tracker created for them has no stored events.
        self._unseen: Dict[str, Optional[int]] = {}
        if self.engine.dialect.name == "sqlite" and self.engine.url.database not in (None, "", ":memory:"):
            self._use_sqlite_wal()
        events = self.SQLEvent.__table__
        self._state = state_table(sa.MetaData())
        self._state.metadata.create_all(self.engine)
        self._read = DriverStatement(self.engine, conversation_query(events, self._state, self.windowed))
        self._insert = DriverStatement(self.engine, events.insert().inline(), EVENT_COLUMNS)
        self._insert_state = DriverStatement(self.engine, insert_state_statement(self.engine, self._state))
        self._update_state = DriverStatement(self.engine, update_state_statement(self._state))
        self._bump_version = DriverStatement(self.engine, bump_version_statement(self._state))
        self._retention_days = retention_days()
        self._purging: Optional[asyncio.Future] = None
        self._next_purge = time.monotonic() + RETENTION_CHECK_SECONDS
        if self._retention_days:
            self._purge_logged()  # at start-up, before any conversation is served

    def _use_sqlite_wal(self) -> None:
        self.engine.dispose()
        self.engine = sa.create_engine(
            self._url, poolclass=sa.pool.QueuePool, connect_args={"check_same_thread": False}
        )
        sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessionmaker = sessionmaker(bind=self.engine)

    def get_db_url(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        return self._url

    async def _retrieve(
        self, sender_id: str, fetch_events_from_all_sessions: bool
    ) -> Optional[DialogueStateTracker]:
        if fetch_events_from_all_sessions:
            # Rasa's query, reading only the event column instead of building an ORM object per row.
            with self.session_scope() as session:
                query = self._event_query(session, sender_id, fetch_events_from_all_sessions)
                rows = query.with_entities(self.SQLEvent.data).all()
            events = [json.loads(data) for (data,) in rows]
            if self.domain is None or not events:
                return None
            return DialogueStateTracker.from_dict(sender_id, events, self.domain.slots)
        with self.engine.connect() as connection:
            rows = self._read.execute(connection, {"sender_id": sender_id}).fetchall()
        version, prefix, stored = latest_session(rows, self.windowed)
        if self.domain is None:
            return None
        if not stored:
            if len(self._unseen) > 10_000:
                self._unseen.clear()
            self._unseen[sender_id] = version
            return None
        self._unseen.pop(sender_id, None)
        events = prefix + [json.loads(data) for _, data in stored]
        tracker = DialogueStateTracker.from_dict(sender_id, events, self.domain.slots)
        setattr(tracker, STORED_EVENTS, len(tracker.events))
        setattr(tracker, READ, Read(version, len(prefix), [event_id for event_id, _ in stored]))
        return tracker

    def purge(self, older_than_days: float, now: Optional[float] = None) -> int:
        """Deletes every conversation whose last event is older than the given days; returns
        how many conversations went."""
        cutoff = (time.time() if now is None else now) - older_than_days * 86400
        events = self.SQLEvent.__table__
        expired = (sa.select(events.c.sender_id).group_by(events.c.sender_id)
                   .having(sa.func.max(events.c.timestamp) < cutoff))
        with self.engine.begin() as connection:
            senders = [row[0] for row in connection.execute(expired)]
            for start in range(0, len(senders), 500):
                chunk = senders[start:start + 500]
                connection.execute(events.delete().where(events.c.sender_id.in_(chunk)))
                connection.execute(self._state.delete().where(self._state.c.sender_id.in_(chunk)))
        if senders:
            logger.info("retention: deleted %s conversations older than %s days", len(senders), older_than_days)
        return len(senders)

    def _purge_now_and_then(self) -> None:
        if not self._retention_days or time.monotonic() < self._next_purge:
            return
        if self._purging is not None and not self._purging.done():
            return
        self._next_purge = time.monotonic() + RETENTION_CHECK_SECONDS
        self._purging = asyncio.get_running_loop().run_in_executor(None, self._purge_logged)

    def _purge_logged(self) -> None:
        try:
            self.purge(self._retention_days)
        except Exception:  # noqa: BLE001 - a failed clean-up must not fail a conversation
            logger.exception("retention: deleting old conversations failed")

    async def save(self, tracker: DialogueStateTracker) -> None:
        """Appends the tracker's new events in one INSERT, in the transaction that checks and
        advances the conversation's state row; raises ConversationChanged, writing nothing, if
        someone else saved the conversation since this tracker was read."""
        self._purge_now_and_then()
        await self.stream_events(tracker)
        stored = getattr(tracker, STORED_EVENTS, None)
        read: Optional[Read] = getattr(tracker, READ, None)
        if stored is None and tracker.sender_id in self._unseen:
            stored, read = 0, Read(self._unseen[tracker.sender_id])  # a conversation just found empty
        if stored == 0 and _only_listening(tracker.events):
            # Rasa saves a conversation it creates before handling its first message; that
            # first action_listen is written with the message's events, in one transaction.
            setattr(tracker, STORED_EVENTS, 0)
            setattr(tracker, READ, read)
            return
        if stored is None or read is None:
            self._save_unread(tracker)
            return
        new_events = list(itertools.islice(tracker.events, stored, None))
        if not new_events:
            return
        rows = [_event_row(tracker.sender_id, event) for event in redact(tracker.events, new_events)]
        window_start, prefix = self._window(tracker, read)
        values = {"conversation": tracker.sender_id, "start_id": window_start, "prefix_json": prefix}
        with self.engine.begin() as connection:
            if read.version is None:
                claimed = self._insert_state.execute(connection, values).rowcount
            else:
                claimed = self._update_state.execute(connection, {**values, "read_version": read.version}).rowcount
            if claimed != 1:
                raise ConversationChanged(tracker.sender_id)  # leaving the block rolls back
            self._insert.execute(connection, rows)
        self._unseen.pop(tracker.sender_id, None)
        setattr(tracker, STORED_EVENTS, len(tracker.events))
        read.version = (read.version or 0) + 1

    def _save_unread(self, tracker: DialogueStateTracker) -> None:
        """A tracker this store did not read (Rasa's API can build one): Rasa's way, counting
        the stored events of the latest session and appending the rest; the state row's
        version moves on, so a save from an earlier read is refused."""
        with self.session_scope() as session:
            stored = self._event_query(session, tracker.sender_id, fetch_events_from_all_sessions=False).count()
        new_events = list(itertools.islice(tracker.events, stored, None))
        rows = [_event_row(tracker.sender_id, event) for event in redact(tracker.events, new_events)]
        if rows:
            with self.engine.begin() as connection:
                self._bump_version.execute(connection, {"conversation": tracker.sender_id})
                self._insert.execute(connection, rows)
        self._unseen.pop(tracker.sender_id, None)

    def _window(self, tracker: DialogueStateTracker, read: Read) -> Tuple[int, str]:
        """(id of the first event of the window, JSON of the prefix) for the state row."""
        events = list(tracker.events)
        if not read.ids:
            return 0, "[]"  # a new conversation: its window starts with its first event
        keep = read.ids[0], _prefix_json(events[: read.prefix_len])
        if not self.windowed:
            return keep
        cut = window_cut(tracker, events, read)
        if cut is None:
            return keep
        position, prefix = cut
        return read.ids[position - read.prefix_len], _prefix_json(prefix)


class FullHistorySQLTrackerStore(UrlSQLTrackerStore):
    """The store reading every event of the latest session, as before the window: the
    reference the window is compared against (tests/e2e, bench/conversation_length.py)."""

    windowed = False


def _prefix_json(prefix: Sequence[Event]) -> str:
    return dumps([redact_event_dict(event.as_dict()) for event in prefix])


def window_cut(
    tracker: DialogueStateTracker, events: List[Event], read: Read
) -> Optional[Tuple[int, List[Event]]]:
    """Where a shorter window can start, as (position in `events`, prefix events), or None
    while the window holds fewer than WINDOW_ACTIONS + WINDOW_SLACK applied actions.

    The latest position among the stored events (their ids are known) where an action_listen
    is followed by a user message, no loop is active, and at least WINDOW_ACTIONS applied
    actions follow. The prefix is the state there: a SlotSet for every slot set since the
    session (or restart) began, and ConversationPaused if the conversation was paused."""
    positions = {id(event): index for index, event in enumerate(events)}
    actions = [positions[id(event)] for event in tracker.applied_events() if isinstance(event, ActionExecuted)]
    in_window = [position for position in actions if position >= read.prefix_len]
    if len(in_window) < WINDOW_ACTIONS + WINDOW_SLACK:
        return None
    last_allowed = min(actions[-WINDOW_ACTIONS], read.prefix_len + len(read.ids) - 1)
    replay = tracker.init_copy()
    best: Optional[Tuple[int, List[Event]]] = None
    for index, event in enumerate(events[: last_allowed + 1]):
        if (
            index > read.prefix_len
            and isinstance(event, ActionExecuted)
            and event.action_name == ACTION_LISTEN_NAME
            and index + 1 < len(events)
            and isinstance(events[index + 1], UserUttered)
            and replay.active_loop_name is None
        ):
            best = index, state_prefix(replay)
        replay.update(event)
    return best


def state_prefix(tracker: DialogueStateTracker) -> List[Event]:
    """Events that bring a new tracker to `tracker`'s slots and pause."""
    prefix: List[Event] = [SlotSet(slot.name, slot.value) for slot in tracker.slots.values() if slot.has_been_set]
    if tracker.is_paused():
        prefix.append(ConversationPaused())
    return prefix


def latest_session(
    rows: Sequence[Any], windowed: bool = True
) -> Tuple[Optional[int], List[Dict[str, Any]], List[Tuple[int, str]]]:
    """(state version, prefix events, [(id, data)] of the stored events) of the latest session,
    from the rows of `conversation_query`. A window that holds a session start begins there,
    without the prefix, as Rasa's read of the latest session would (its timestamp or later)."""
    if not rows:
        return None, [], []
    version, prefix_json = rows[0][0], rows[0][1]
    stored = [(event_id, timestamp, kind, data) for _, _, event_id, timestamp, kind, data in rows
              if event_id is not None]
    starts = [timestamp for _, timestamp, kind, _ in stored if kind == SessionStarted.type_name]
    if starts:
        stored = [row for row in stored if row[1] >= max(starts)]
    prefix = json.loads(prefix_json) if windowed and prefix_json and version is not None and not starts else []
    return version, prefix, [(event_id, data) for event_id, _, _, data in stored]


def _only_listening(events: Sequence[Event]) -> bool:
    return len(events) == 1 and isinstance(events[0], ActionExecuted) and events[0].action_name == ACTION_LISTEN_NAME


def conversation_query(events: sa.Table, state: sa.Table, windowed: bool = True) -> Any:
    """One statement reading a conversation: rows (version, prefix, id, timestamp, type, data).

    With a state row: its window's events (every event of the conversation if not `windowed`),
    or one row without an event if there are none. Without one (stored before the state row
    existed): Rasa's `_event_query` for the latest session, with version and prefix NULL."""
    sender = sa.bindparam("sender_id")
    event_columns = (events.c.id, events.c.timestamp, events.c.type_name, events.c.data)
    joined = sa.and_(events.c.sender_id == state.c.sender_id)
    if windowed:
        joined = sa.and_(joined, events.c.id >= state.c.window_start)
    with_state = (
        sa.select(state.c.version, state.c.prefix, *event_columns)
        .select_from(state.outerjoin(events, joined))
        .where(state.c.sender_id == sender)
    )
    session_start = (
        sa.select(sa.func.max(events.c.timestamp))
        .where(events.c.sender_id == sender, events.c.type_name == SessionStarted.type_name)
        .scalar_subquery()
    )
    without_state = sa.select(
        sa.cast(sa.null(), sa.Integer), sa.cast(sa.null(), sa.Text), *event_columns
    ).where(
        events.c.sender_id == sender,
        ~sa.exists().where(state.c.sender_id == sender),
        sa.or_(events.c.timestamp >= session_start, session_start.is_(None)),
    )
    return sa.union_all(with_state, without_state).order_by(sa.literal_column("3"))


def insert_state_statement(engine: sa.engine.Engine, state: sa.Table) -> Any:
    """The state row of a conversation that has none; does nothing if one exists by now."""
    values = {"sender_id": sa.bindparam("conversation"), "version": 1,
              "window_start": sa.bindparam("start_id"), "prefix": sa.bindparam("prefix_json")}
    dialect = {"postgresql": postgresql, "sqlite": sqlite}.get(engine.dialect.name)
    if dialect is None:
        raise ValueError(f"TRACKER_DB_URL: {engine.dialect.name} is not supported (SQLite or PostgreSQL)")
    return dialect.insert(state).values(values).on_conflict_do_nothing(index_elements=[state.c.sender_id])


def update_state_statement(state: sa.Table) -> Any:
    """Advances the state row only if it still has the version the tracker was read with."""
    return (
        state.update()
        .where(state.c.sender_id == sa.bindparam("conversation"), state.c.version == sa.bindparam("read_version"))
        .values(version=state.c.version + 1, window_start=sa.bindparam("start_id"),
                prefix=sa.bindparam("prefix_json"))
    )


def bump_version_statement(state: sa.Table) -> Any:
    conversation = sa.bindparam("conversation")
    return state.update().where(state.c.sender_id == conversation).values(version=state.c.version + 1)


class DriverStatement:
    """A statement compiled once for an engine's dialect and run with `exec_driver_sql`."""

    def __init__(self, engine: sa.engine.Engine, statement: Any, column_keys: Optional[Sequence[str]] = None):
        compiled = statement.compile(dialect=engine.dialect, column_keys=list(column_keys or []) or None)
        self.sql = str(compiled)
        self._positions = list(compiled.positiontup) if compiled.positional else None
        # Values written into the statement (e.g. the session_started type name).
        binds = compiled.binds.values()
        self._fixed = {compiled.bind_names[bind]: bind.value for bind in binds if bind.value is not None}

    def _params(self, values: Dict[str, Any]) -> Union[Dict[str, Any], tuple]:
        if self._fixed:
            values = {**self._fixed, **values}
        return values if self._positions is None else tuple(values[name] for name in self._positions)

    def execute(self, connection: Any, values: Union[Dict[str, Any], List[Dict[str, Any]]]) -> Any:
        if isinstance(values, list):
            return connection.exec_driver_sql(self.sql, [self._params(v) for v in values])
        return connection.exec_driver_sql(self.sql, self._params(values))


def _event_row(sender_id: str, event: Event) -> Dict[str, Any]:
    """The `events` row for an event, with the same columns Rasa fills."""
    data = event.as_dict()
    return {
        "sender_id": sender_id,
        "type_name": event.type_name,
        "timestamp": data.get("timestamp"),
        "intent_name": data.get("parse_data", {}).get("intent", {}).get(INTENT_NAME_KEY),
        "action_name": data.get("name"),
        "data": dumps(data),  # the same JSON values, encoded with orjson (faster than json.dumps)
    }


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
