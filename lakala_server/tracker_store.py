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

Conversations whose last event is older than TRACKER_RETENTION_DAYS (default 90; 0 keeps
everything) are deleted when the store starts, then at most once an hour in the background.
"""
import asyncio
import itertools
import json
import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Union

import sqlalchemy as sa
from rasa.core.brokers.broker import EventBroker
from rasa.core.tracker_store import SQLTrackerStore
from rasa.shared.core.constants import ACTION_LISTEN_NAME
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ActionExecuted, Event, SessionStarted
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.shared.nlu.constants import INTENT_NAME_KEY
from sqlalchemy.orm import sessionmaker

from lakala_common.settings import private_sqlite_file
from lakala_server import config
from lakala_server.json_codec import dumps
from lakala_server.redaction import redact

DEFAULT_SQLITE_PATH = config.DEFAULT_TRACKER_DB_PATH
# How many of a tracker's events are already in the database (set on read and save).
STORED_EVENTS = "_lakala_stored_events"
EVENT_COLUMNS = ("sender_id", "type_name", "timestamp", "intent_name", "action_name", "data")
RETENTION_CHECK_SECONDS = 3600.0

logger = logging.getLogger(__name__)


def retention_days() -> float:
    """TRACKER_RETENTION_DAYS: how long a finished conversation is kept; 0 keeps them all."""
    return config.current().tracker_retention_days


def tracker_db_url() -> str:
    url = config.current().tracker_db_url
    if url == f"sqlite:///{DEFAULT_SQLITE_PATH}":
        DEFAULT_SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
    return url


class UrlSQLTrackerStore(SQLTrackerStore):
    """SQLTrackerStore whose database comes from TRACKER_DB_URL."""

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
        # Senders this store just found nothing for: a tracker created for them has no stored events.
        self._unseen: set = set()
        if self.engine.dialect.name == "sqlite" and self.engine.url.database not in (None, "", ":memory:"):
            self._use_sqlite_wal()
        self._latest_session = DriverStatement(self.engine, latest_session_query(self.SQLEvent.__table__))
        self._insert = DriverStatement(self.engine, self.SQLEvent.__table__.insert().inline(), EVENT_COLUMNS)
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
        else:
            with self.engine.connect() as connection:
                rows = self._latest_session.execute(connection, {"sender_id": sender_id}).fetchall()
        events = [json.loads(data) for (data,) in rows]
        if self.domain is None or not events:
            tracker = None
        else:
            tracker = DialogueStateTracker.from_dict(sender_id, events, self.domain.slots)
        if fetch_events_from_all_sessions or self.domain is None:
            return tracker
        if tracker is None:
            if len(self._unseen) > 10_000:
                self._unseen.clear()
            self._unseen.add(sender_id)
        else:
            self._unseen.discard(sender_id)
            setattr(tracker, STORED_EVENTS, len(tracker.events))
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
                connection.execute(events.delete().where(events.c.sender_id.in_(senders[start:start + 500])))
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
        """Rasa's save, with the new events written in one INSERT instead of through the ORM."""
        self._purge_now_and_then()
        await self.stream_events(tracker)
        stored = getattr(tracker, STORED_EVENTS, None)
        if stored is None and tracker.sender_id in self._unseen:
            stored = 0  # a conversation this store just found nothing for
        if stored == 0 and _only_listening(tracker.events):
            # Rasa saves a conversation it creates before handling its first message; that
            # first action_listen is written with the message's events, in one transaction.
            setattr(tracker, STORED_EVENTS, 0)
            return
        if stored is None:
            # Rasa counts the stored rows of the session on every save (a query per message);
            # a tracker this store read or wrote knows that number, only others are counted.
            with self.session_scope() as session:
                stored = self._event_query(session, tracker.sender_id, fetch_events_from_all_sessions=False).count()
        rows = [_event_row(tracker.sender_id, event) for event in self._events_after(tracker, stored)]
        if rows:
            with self.engine.begin() as connection:
                self._insert.execute(connection, rows)
        self._unseen.discard(tracker.sender_id)

    @staticmethod
    def _events_after(tracker: DialogueStateTracker, stored: int) -> List[Event]:
        """The tracker's events after the `stored` ones, redacted; remembers the new count
        unless a new session began (the stored count then restarts from that session)."""
        new_events = list(itertools.islice(tracker.events, stored, None))
        if any(isinstance(event, SessionStarted) for event in new_events):
            if hasattr(tracker, STORED_EVENTS):
                delattr(tracker, STORED_EVENTS)
        else:
            setattr(tracker, STORED_EVENTS, len(tracker.events))
        return redact(tracker.events, new_events)


def _only_listening(events: Sequence[Event]) -> bool:
    return len(events) == 1 and isinstance(events[0], ActionExecuted) and events[0].action_name == ACTION_LISTEN_NAME


def latest_session_query(events: sa.Table) -> Any:
    """Rasa's `_event_query` for the latest session, as one statement reading the data column."""
    sender = sa.bindparam("sender_id")
    session_start = (
        sa.select(sa.func.max(events.c.timestamp))
        .where(events.c.sender_id == sender, events.c.type_name == SessionStarted.type_name)
        .scalar_subquery()
    )
    return (
        sa.select(events.c.data)
        .where(events.c.sender_id == sender, sa.or_(events.c.timestamp >= session_start, session_start.is_(None)))
        .order_by(events.c.id)
    )


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
