"""Wraps `FailSafeTrackerStore.save` (rasa/core/tracker_store.py).

Why: the server wraps the tracker store in FailSafeTrackerStore, which answers any error of a
save by logging it and keeping the conversation in memory instead, and the message is answered
as if nothing happened. A save the store refuses because another server saved the conversation
after it was read (lakala_server/tracker_store.py ConversationChanged) must not pass as saved:
the answer was worked out on an old state, and the memory copy is never read again. That error
now goes on to the channel, which answers with the apology instead (lakala_server/fallback.py).
Every other error is handled by Rasa's method, unchanged.

Proved by: tests/e2e/test_long_conversations.py::test_a_message_answered_from_a_stale_read_gets_the_apology
(the real server, while another store saves the conversation) and tests/unit/test_patches.py::
test_a_refused_save_is_not_kept_in_memory.
"""
from rasa.core.tracker_store import FailSafeTrackerStore
from rasa.shared.core.trackers import DialogueStateTracker

from lakala_server.tracker_store import ConversationChanged

RASA_SAVE = FailSafeTrackerStore.save


async def _save_refusing_conflicts(self: FailSafeTrackerStore, tracker: DialogueStateTracker) -> None:
    try:
        await self._tracker_store.save(tracker)
    except ConversationChanged:
        raise
    except Exception:  # noqa: BLE001 - Rasa's own handling, as it was
        await RASA_SAVE(self, tracker)


def install() -> None:
    FailSafeTrackerStore.save = _save_refusing_conflicts  # type: ignore[method-assign]
