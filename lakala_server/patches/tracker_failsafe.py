"""Replaces `Agent._create_tracker_store` (rasa/core/agent.py) so that the agent's
`FailSafeTrackerStore` raises when the tracker store fails, instead of falling back.

Why: Rasa wraps every tracker store in a FailSafeTrackerStore without an error callback. When
the database is unreachable (PostgreSQL restarting), a failed read becomes an empty conversation
and a failed save goes to process memory: the merchant is answered as a stranger (a verified
terminal forgotten) and the turn is never stored, with one line in the log. With the callback
raising, the turn fails, `fallback.never_silent` answers with the apology and the way to a
human, and a client that retries is answered properly once the database is back.

Proved by: tests/unit/test_patches.py::test_a_failing_tracker_store_fails_the_turn and
tests/cluster/test_faults.py (PostgreSQL restarted under load: nothing lost).
"""
from typing import Optional

from rasa.core.agent import Agent
from rasa.core.tracker_store import FailSafeTrackerStore, TrackerStore
from rasa.shared.core.domain import Domain

RASA_CREATE_TRACKER_STORE = Agent._create_tracker_store


class TrackerStoreUnavailable(RuntimeError):
    """The conversation store could not be read or written; the turn fails."""


def raise_unavailable(error: Exception) -> None:
    raise TrackerStoreUnavailable(f"the conversation store failed: {error.__class__.__name__}") from error


def _create_tracker_store(store: Optional[TrackerStore], domain: Domain) -> TrackerStore:
    created = RASA_CREATE_TRACKER_STORE(store, domain)
    if isinstance(created, FailSafeTrackerStore):
        created._on_tracker_store_error = raise_unavailable
    return created


def install() -> None:
    Agent._create_tracker_store = staticmethod(_create_tracker_store)  # type: ignore[method-assign]
