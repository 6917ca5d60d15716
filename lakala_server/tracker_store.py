"""Rasa's SQL tracker store, configured by one SQLAlchemy URL so conversations
survive a server restart on SQLite (default) or PostgreSQL, with phone tails
masked before they are written.

On SQLite, Rasa 3.6 opens a new connection for every query and commits in the
default rollback-journal mode, which syncs the file to disk twice per message.
Profiling under load put a third of the server's time here. The store keeps its
connections open and uses write-ahead logging with synchronous=NORMAL, SQLite's
recommended setting for WAL: a committed message survives a crash of the server,
and the database stays consistent on power loss (the last messages can be lost).
"""
import itertools
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import sqlalchemy as sa
from rasa.core.brokers.broker import EventBroker
from rasa.core.tracker_store import SQLTrackerStore
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import Event, SessionStarted
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.shared.nlu.constants import INTENT_NAME_KEY
from sqlalchemy.orm import sessionmaker

from lakala_server.redaction import redact

DEFAULT_SQLITE_PATH = Path("var") / "tracker.db"
# How many of a tracker's events are already in the database (set on read and save).
STORED_EVENTS = "_lakala_stored_events"


def tracker_db_url() -> str:
    url = os.environ.get("TRACKER_DB_URL", "").strip()
    if url:
        return url
    DEFAULT_SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_SQLITE_PATH}"


class UrlSQLTrackerStore(SQLTrackerStore):
    """SQLTrackerStore whose database comes from TRACKER_DB_URL."""

    def __init__(
        self,
        domain: Optional[Domain] = None,
        event_broker: Optional[EventBroker] = None,
        **kwargs: Any,
    ) -> None:
        self._url = tracker_db_url()
        kwargs.pop("host", None)
        super().__init__(domain=domain, event_broker=event_broker, **kwargs)
        # Senders this store just found nothing for: a tracker created for them has no stored events.
        self._unseen: set = set()
        if self.engine.dialect.name == "sqlite" and self.engine.url.database not in (None, "", ":memory:"):
            self._use_sqlite_wal()

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
        # Rasa's query, reading only the event column instead of building an ORM object per row.
        with self.session_scope() as session:
            query = self._event_query(session, sender_id, fetch_events_from_all_sessions)
            events = [json.loads(data) for (data,) in query.with_entities(self.SQLEvent.data).all()]
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

    def init_tracker(self, sender_id: str) -> DialogueStateTracker:
        tracker = super().init_tracker(sender_id)
        if sender_id in self._unseen:
            self._unseen.discard(sender_id)
            setattr(tracker, STORED_EVENTS, 0)
        return tracker

    async def save(self, tracker: DialogueStateTracker) -> None:
        """Rasa's save, with the new events written in one INSERT instead of through the ORM."""
        await self.stream_events(tracker)
        with self.session_scope() as session:
            rows = [_event_row(tracker.sender_id, event) for event in self._additional_events(session, tracker)]
            if rows:
                session.execute(self.SQLEvent.__table__.insert(), rows)
            session.commit()

    def _additional_events(self, session: Any, tracker: DialogueStateTracker) -> Iterator[Event]:
        # Rasa counts the stored rows of the session on every save (a query per
        # message). A tracker this store just read knows that number already; one
        # it did not read, or one where a new session began, is counted as Rasa does.
        stored = getattr(tracker, STORED_EVENTS, None)
        if stored is None:
            new_events = list(super()._additional_events(session, tracker))
        else:
            new_events = list(itertools.islice(tracker.events, stored, None))
        if any(isinstance(event, SessionStarted) for event in new_events):
            if hasattr(tracker, STORED_EVENTS):
                delattr(tracker, STORED_EVENTS)
        else:
            setattr(tracker, STORED_EVENTS, len(tracker.events))
        return redact(tracker.events, new_events)


def _event_row(sender_id: str, event: Event) -> Dict[str, Any]:
    """The `events` row for an event, with the same columns Rasa fills."""
    data = event.as_dict()
    return {
        "sender_id": sender_id,
        "type_name": event.type_name,
        "timestamp": data.get("timestamp"),
        "intent_name": data.get("parse_data", {}).get("intent", {}).get(INTENT_NAME_KEY),
        "action_name": data.get("name"),
        "data": json.dumps(data),
    }


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
