"""Rasa's SQL tracker store, configured by one SQLAlchemy URL so conversations
survive a server restart on SQLite (default) or PostgreSQL, with phone tails
masked before they are written."""
import os
from pathlib import Path
from typing import Any, Iterator, Optional

from rasa.core.brokers.broker import EventBroker
from rasa.core.tracker_store import SQLTrackerStore
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import Event
from rasa.shared.core.trackers import DialogueStateTracker

from lakala_server.redaction import redact

DEFAULT_SQLITE_PATH = Path("var") / "tracker.db"


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

    def get_db_url(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        return self._url

    def _additional_events(self, session: Any, tracker: DialogueStateTracker) -> Iterator[Event]:
        new_events = list(super()._additional_events(session, tracker))
        return redact(tracker.events, new_events)
