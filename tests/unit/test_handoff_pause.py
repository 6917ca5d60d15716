"""A paused conversation (a person took it over): idle time, WeChat's session events, and the
wrapper around Rasa's prediction loop (lakala_server/patches/handoff_pause.py)."""
import asyncio
from typing import Any, List

from rasa.core.channels.channel import CollectingOutputChannel
from rasa.core.lock_store import InMemoryLockStore
from rasa.core.tracker_store import InMemoryTrackerStore
from rasa.shared.core.constants import ACTION_LISTEN_NAME
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import (
    ActionExecuted,
    ConversationPaused,
    ConversationResumed,
    SlotSet,
    UserUttered,
)
from rasa.shared.core.trackers import DialogueStateTracker

from lakala_server import handoff
from lakala_server.patches import handoff_pause

DOMAIN = Domain.from_yaml("""
version: "3.1"
slots:
  handoff_at: {type: float, influence_conversation: false, max_value: 1.0e+12, mappings: [{type: custom}]}
  handoff_agent: {type: text, influence_conversation: false, mappings: [{type: custom}]}
""")


def tracker(*events: Any) -> DialogueStateTracker:
    return DialogueStateTracker.from_events("wechat:o1", list(events), DOMAIN.slots)


def user(text: str, at: float) -> UserUttered:
    return UserUttered(text, timestamp=at)


def listen(at: float) -> ActionExecuted:
    return ActionExecuted(ACTION_LISTEN_NAME, timestamp=at)


def paused_at(at: float) -> List[Any]:
    return [listen(at - 2), user("转人工", at - 1), ActionExecuted("action_handoff", timestamp=at),
            ConversationPaused(timestamp=at), SlotSet("handoff_at", at, timestamp=at), listen(at)]


def test_a_paused_conversation_idle_past_the_timeout_expires() -> None:
    conversation = tracker(*paused_at(1000.0), user("还在吗", 1100.0))
    assert not handoff.idle_expired(conversation, 1800, now=2799.0)
    assert handoff.idle_expired(conversation, 1800, now=2801.0)


def test_each_message_in_the_pause_counts_as_activity() -> None:
    conversation = tracker(*paused_at(1000.0), user("还在吗", 2500.0), user("喂", 3000.0))
    # The message being handled is the last one; the one before it (2500) was activity.
    assert not handoff.idle_expired(conversation, 1800, now=4200.0)
    assert handoff.idle_expired(conversation, 1800, now=4301.0)


def test_a_conversation_with_the_bot_never_expires() -> None:
    assert not handoff.idle_expired(tracker(listen(1.0), user("你好", 2.0)), 1800, now=1e9)


def test_an_agent_taking_over_pauses_and_closing_resumes() -> None:
    conversation = tracker(listen(1.0), user("押金能退吗", 2.0), ActionExecuted("utter_deposit"), listen(3.0))
    for event in handoff.agent_event_events(conversation, handoff.KF_CREATE, "kf2001@gh", now=10.0):
        conversation.update(event)
    assert conversation.is_paused() and conversation.get_slot("handoff_agent") == "kf2001@gh"
    assert conversation.latest_action_name == ACTION_LISTEN_NAME
    for event in handoff.agent_event_events(conversation, handoff.KF_SWITCH, "kf2002@gh", now=20.0):
        conversation.update(event)
    assert conversation.is_paused() and conversation.get_slot("handoff_agent") == "kf2002@gh"
    assert conversation.get_slot("handoff_at") == 20.0
    for event in handoff.agent_event_events(conversation, handoff.KF_CLOSE, "kf2002@gh", now=30.0):
        conversation.update(event)
    assert not conversation.is_paused()
    assert conversation.get_slot("handoff_agent") is None and conversation.get_slot("handoff_at") is None


def test_a_close_for_a_conversation_with_the_bot_changes_nothing_but_the_agent() -> None:
    conversation = tracker(listen(1.0))
    events = handoff.agent_event_events(conversation, handoff.KF_CLOSE, "kf2001@gh")
    assert not any(isinstance(event, ConversationResumed) for event in events)


class _Agent:
    def __init__(self) -> None:
        self.lock_store = InMemoryLockStore()
        self.tracker_store = InMemoryTrackerStore(DOMAIN)


def test_agent_events_are_stored_with_the_conversation() -> None:
    agent = _Agent()
    assert asyncio.run(handoff.agent_event(agent, "wechat:o1", handoff.KF_CREATE, "kf2001@gh")) is False
    stored = asyncio.run(agent.tracker_store.retrieve("wechat:o1"))
    assert stored.is_paused()
    assert asyncio.run(handoff.agent_event(agent, "wechat:o1", handoff.KF_CLOSE, "kf2001@gh")) is True
    assert not asyncio.run(agent.tracker_store.retrieve("wechat:o1")).is_paused()


def _run_loop(conversation: DialogueStateTracker, monkeypatch: Any, timeout: float = 1800) -> tuple:
    """Runs the wrapped loop around a stand-in for Rasa's that records whether it predicted."""
    predicted: List[bool] = []

    async def rasa_loop(self: Any, output_channel: Any, tracker: DialogueStateTracker) -> None:
        predicted.append(not tracker.is_paused())
        if not tracker.is_paused():
            tracker.update(ActionExecuted("utter_deposit"))
            tracker.update(ActionExecuted(ACTION_LISTEN_NAME))

    monkeypatch.setattr(handoff_pause, "RASA_RUN_PREDICTION_LOOP", rasa_loop)
    monkeypatch.setenv("HANDOFF_TIMEOUT_MINUTES", str(timeout / 60))
    channel = CollectingOutputChannel()
    asyncio.run(handoff_pause._run_prediction_loop(None, channel, conversation))
    return predicted, handoff.was_paused(channel)


def test_the_wrapper_marks_a_paused_turn_and_ends_it_listening(monkeypatch: Any) -> None:
    conversation = tracker(listen(1.0), user("转人工", 2.0), ActionExecuted("action_handoff"), ConversationPaused())
    predicted, marked = _run_loop(conversation, monkeypatch)
    assert marked and conversation.latest_action_name == ACTION_LISTEN_NAME
    listens = [e for e in conversation.events if isinstance(e, ActionExecuted) and e.action_name == ACTION_LISTEN_NAME]
    predicted, marked = _run_loop(conversation, monkeypatch)
    again = [e for e in conversation.events if isinstance(e, ActionExecuted) and e.action_name == ACTION_LISTEN_NAME]
    assert predicted == [False] and marked and len(again) == len(listens)


def test_the_wrapper_resumes_an_idle_pause_before_rasa_predicts(monkeypatch: Any) -> None:
    import time

    long_ago = time.time() - 3600
    conversation = tracker(*paused_at(long_ago), user("押金能退吗", time.time()))
    predicted, marked = _run_loop(conversation, monkeypatch, timeout=1800)
    assert predicted == [True] and not marked
    assert any(isinstance(event, ConversationResumed) for event in conversation.events)


def test_the_wrapper_keeps_a_recent_pause(monkeypatch: Any) -> None:
    import time

    conversation = tracker(*paused_at(time.time() - 60), user("押金能退吗", time.time()))
    predicted, marked = _run_loop(conversation, monkeypatch, timeout=1800)
    assert predicted == [False] and marked
