"""Conversations a person has taken over: while one is paused the bot does not answer in it.

A conversation is paused by Rasa's own `ConversationPaused` event: `action_handoff` returns it
when it transfers a WeChat merchant to the 公众号's customer-service agents, and an agent tool
may append it through Rasa's conversation API. It is stored with the conversation (the tracker
store keeps it in the window's prefix too), so a pause survives a restart and holds on every
replica. Rasa logs the messages of a paused conversation and predicts nothing
(`MessageProcessor._should_handle_message`); lakala_server/patches/handoff_pause.py adds two
things around that:

- a paused conversation with nothing happening for HANDOFF_TIMEOUT_MINUTES (the pause, an agent
  taking or passing it on, a message) goes back to the bot at its next message;
- the turn's output channel is marked paused, so `fallback.never_silent` does not take the
  silence for a failure and the WeChat channel answers with `transfer_customer_service`.

The WeChat channel reports WeChat's customer-service session events here (`agent_event`):
kf_create_session and kf_switch_session record the agent, kf_close_session resumes the bot.
"""
from __future__ import annotations

import logging
import time
from typing import Any, List, Optional

from rasa.shared.core.constants import ACTION_LISTEN_NAME
from rasa.shared.core.events import (
    ActionExecuted,
    ConversationPaused,
    ConversationResumed,
    Event,
    SlotSet,
    UserUttered,
)
from rasa.shared.core.trackers import DialogueStateTracker

logger = logging.getLogger(__name__)

HANDOFF_AT = "handoff_at"  # slot: when the pause began or an agent last took or passed it on (unix time)
HANDOFF_AGENT = "handoff_agent"  # slot: the agent account serving the conversation, if WeChat said
PAUSED_MARK = "_lakala_conversation_paused"

KF_CREATE = "kf_create_session"
KF_SWITCH = "kf_switch_session"
KF_CLOSE = "kf_close_session"
KF_EVENTS = frozenset({KF_CREATE, KF_SWITCH, KF_CLOSE})


def mark_paused(output_channel: Any) -> None:
    """Marks the output channel of a turn that ended with the conversation paused."""
    try:
        setattr(output_channel, PAUSED_MARK, True)
    except AttributeError:  # an output channel with __slots__: nothing to mark
        logger.debug("cannot mark %s as paused", type(output_channel).__name__)


def was_paused(output_channel: Any) -> bool:
    return bool(getattr(output_channel, PAUSED_MARK, False))


def last_activity(tracker: DialogueStateTracker) -> Optional[float]:
    """When something last happened in the paused conversation before the message being
    handled: the pause, an agent event (the HANDOFF_AT slot), or the event before that message."""
    moments: List[float] = []
    at = tracker.get_slot(HANDOFF_AT)
    if isinstance(at, int | float) and not isinstance(at, bool):
        moments.append(float(at))
    current_seen = previous_seen = False
    for event in reversed(tracker.events):
        if isinstance(event, ConversationPaused):
            moments.append(event.timestamp)
            break
        if not current_seen:
            current_seen = isinstance(event, UserUttered)
        elif not previous_seen:
            moments.append(event.timestamp)
            previous_seen = True
    return max(moments) if moments else None


def idle_expired(tracker: DialogueStateTracker, timeout_seconds: float, now: Optional[float] = None) -> bool:
    """Whether a paused conversation has been idle longer than the timeout."""
    if not tracker.is_paused() or timeout_seconds <= 0:
        return False
    since = last_activity(tracker)
    return since is not None and (now if now is not None else time.time()) - since > timeout_seconds


def resume_events() -> List[Event]:
    return [ConversationResumed(), SlotSet(HANDOFF_AT, None), SlotSet(HANDOFF_AGENT, None)]


def pause_events(tracker: DialogueStateTracker, now: Optional[float] = None) -> List[Event]:
    """Events that pause the conversation between turns (an agent took it from WeChat's side)."""
    events: List[Event] = []
    if tracker.latest_action_name != ACTION_LISTEN_NAME:
        events.append(ActionExecuted(ACTION_LISTEN_NAME))
    events += [ConversationPaused(), SlotSet(HANDOFF_AT, now if now is not None else time.time())]
    return events


def agent_event_events(tracker: DialogueStateTracker, kind: str, account: str,
                       now: Optional[float] = None) -> List[Event]:
    """The events that record one of WeChat's customer-service session events."""
    now = now if now is not None else time.time()
    if kind == KF_CLOSE:
        return resume_events() if tracker.is_paused() else [SlotSet(HANDOFF_AGENT, None)]
    events = [] if tracker.is_paused() else pause_events(tracker, now)
    return events + [SlotSet(HANDOFF_AT, now), SlotSet(HANDOFF_AGENT, account or None)]


async def agent_event(agent: Any, sender_id: str, kind: str, account: str = "") -> bool:
    """Records a customer-service session event in the conversation, under its lock as
    Rasa's own conversation API appends events. Returns whether the conversation was paused
    before the event."""
    async with agent.lock_store.lock(sender_id):
        tracker = await agent.tracker_store.get_or_create_tracker(sender_id)
        was = tracker.is_paused()
        for event in agent_event_events(tracker, kind, account):
            tracker.update(event)
        await agent.tracker_store.save(tracker)
    logger.info("conversation %s: %s (was %s)", sender_id, kind, "paused" if was else "with the bot")
    return was
