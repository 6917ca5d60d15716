"""The tracker store reads a window of each conversation, and nothing the bot decides changes.

A long conversation (FAQ, lookups with a form and digressions in it, fallbacks Rasa reverts,
a restart, a new session) is saved turn by turn through UrlSQLTrackerStore. Before every
action, the trained rule policy is asked what to do on the windowed tracker and on the whole
latest session read from the same database (FullHistorySQLTrackerStore): the answers, the
states the rules look at, the slots and the loop must be the same. The window must stay short.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple

import pytest
import sqlalchemy as sa
from rasa.core.policies.rule_policy import RULES, RULES_FOR_LOOP_UNHAPPY_PATH, RulePolicy
from rasa.core.training import load_data
from rasa.engine.graph import ExecutionContext, GraphSchema
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource
from rasa.shared.core.constants import ACTION_LISTEN_NAME, ACTION_SESSION_START_NAME
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import (
    ActionExecuted,
    ActionExecutionRejected,
    ActiveLoop,
    BotUttered,
    Event,
    Restarted,
    SessionStarted,
    SlotSet,
    UserUtteranceReverted,
    UserUttered,
)
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.shared.importers.importer import TrainingDataImporter

from lakala_nlu.rule_policy import FastRulePolicy
from lakala_server.tracker_store import WINDOW_ACTIONS, FullHistorySQLTrackerStore, UrlSQLTrackerStore

ROOT = Path(__file__).resolve().parents[2]
FORM = "terminal_status_form"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Domain, FastRulePolicy]:
    importer = TrainingDataImporter.load_from_config(
        str(ROOT / "config.yml"), str(ROOT / "domain.yml"), [str(ROOT / "data")]
    )
    domain = importer.get_domain()
    rules = load_data(str(ROOT / "data" / "rules"), domain, augmentation_factor=0)
    config = {**RulePolicy.get_default_config(), "core_fallback_threshold": 0.3,
              "core_fallback_action_name": "action_default_fallback", "enable_fallback_prediction": True}
    policy = FastRulePolicy.create(config, LocalModelStorage(tmp_path_factory.mktemp("policy")),
                                   Resource("policy"), ExecutionContext(GraphSchema({}), "test"))
    policy.train(rules, domain)
    return domain, policy


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTGRESQL_SCHEMA", raising=False)
    monkeypatch.setenv("TRACKER_RETENTION_DAYS", "0")


def test_every_rule_fits_in_the_window(trained: Tuple[Domain, FastRulePolicy]) -> None:
    """A rule looks back as many states as it has; the window keeps WINDOW_ACTIONS of them."""
    _, policy = trained
    keys = [*policy.lookup[RULES], *policy.lookup[RULES_FOR_LOOP_UNHAPPY_PATH]]
    lengths = [len(RulePolicy._rule_key_to_state(key)) for key in keys]
    assert lengths and max(lengths) * 3 <= WINDOW_ACTIONS


# --- one conversation, turn by turn (each turn ends with the bot listening) ------------------------------


def user(intent: str, text: str = "", **extra: Any) -> UserUttered:
    return UserUttered(text or intent, intent={"name": intent, "confidence": 0.95}, **extra)


def reply(action: str, text: str = "好的", buttons: Any = None) -> List[Event]:
    return [ActionExecuted(action), BotUttered(text, {"buttons": buttons})]


def faq(number: int) -> List[Event]:
    return [user("faq", f"问题{number}"), *reply("utter_faq", f"答案{number}")]


def clarify() -> List[Event]:
    buttons = [{"title": "查终端", "payload": "/check_terminal_status"}]
    return [user("nlu_fallback", "嗯"), *reply("action_clarify", "您是想？", buttons)]


def reverted_fallback() -> List[Event]:
    return [user("out_of_scope", "天气"), *reply("action_default_fallback", "抱歉"), UserUtteranceReverted()]


def start_lookup() -> List[Event]:
    return [user("check_terminal_status", "查终端"), ActionExecuted(FORM), ActiveLoop(FORM),
            SlotSet("requested_slot", "terminal_id"), BotUttered("请输入终端号")]


def give_terminal() -> List[Event]:
    return [user("inform", "K7306118", entities=[{"entity": "terminal_id", "value": "K7306118"}]),
            ActionExecuted(FORM), SlotSet("terminal_id", "K7306118"), SlotSet("requested_slot", "phone_tail"),
            BotUttered("请输入手机后4位")]


def digress(number: int) -> List[Event]:
    return [user("faq", f"问题{number}"), ActionExecutionRejected(FORM), *reply("utter_faq", f"答案{number}"),
            ActionExecuted(FORM), SlotSet("requested_slot", "phone_tail"), BotUttered("请输入手机后4位")]


def give_tail() -> List[Event]:
    return [user("inform", "后四位"), ActionExecuted(FORM), SlotSet("phone_tail", "verified"),
            SlotSet("verified_terminal", "K7306118"), ActiveLoop(None), SlotSet("requested_slot", None),
            *reply("action_terminal_status", "终端K7306118沉睡中")]


def follow_up() -> List[Event]:
    return [user("ask_deposit", "押金能退吗"), *reply("action_terminal_followup", "押金99元")]


def restart() -> List[Event]:
    return [user("restart", "/restart"), ActionExecuted("action_restart"), Restarted()]


def script() -> Iterator[List[Event]]:
    """About 300 turns."""
    numbers = itertools.count()
    for round_ in range(5):
        yield from ([user("greet", "你好"), *reply("utter_greet")], start_lookup(), give_terminal())
        yield from (digress(next(numbers)) for _ in range(8 if round_ else 40))  # a long time inside the form
        yield give_tail()
        yield from (follow_up(), clarify())
        yield from (faq(next(numbers)) for _ in range(20))
        yield from (reverted_fallback() for _ in range(6))
        yield from (faq(next(numbers)) for _ in range(5))
        if round_ == 3:
            yield restart()


def latest_session(store: UrlSQLTrackerStore, sender: str) -> DialogueStateTracker:
    tracker = asyncio.run(store.retrieve(sender))
    assert tracker is not None
    return tracker


def same_decisions(domain: Domain, policy: FastRulePolicy, windowed: DialogueStateTracker,
                   full: DialogueStateTracker) -> None:
    assert windowed.current_slot_values() == full.current_slot_values()
    assert windowed.active_loop == full.active_loop
    assert windowed.latest_message == full.latest_message
    assert windowed.latest_action == full.latest_action
    assert windowed.is_paused() == full.is_paused()
    # Every state but the window's first (the prefix: no action or message yet) is the full history's.
    states, full_states = windowed.past_states(domain), full.past_states(domain)
    assert len(states) > WINDOW_ACTIONS or states == full_states  # shorter only after a restart
    assert states[1:] == full_states[len(full_states) - len(states) + 1 :]
    decided = policy.predict_action_probabilities(windowed, domain)
    assert decided.probabilities == policy.predict_action_probabilities(full, domain).probabilities
    assert decided.max_confidence > 0


def drive(domain: Domain, policy: FastRulePolicy, make: Callable[[type], UrlSQLTrackerStore]) -> None:
    store, reference = make(UrlSQLTrackerStore), make(FullHistorySQLTrackerStore)
    sender = "long-talk"
    clock = itertools.count(1_800_000_000.0, 1.0)
    tracker = DialogueStateTracker.from_events(sender, [ActionExecuted(ACTION_SESSION_START_NAME),
                                                        SessionStarted(), ActionExecuted(ACTION_LISTEN_NAME)],
                                               domain.slots)
    for event in tracker.events:
        event.timestamp = next(clock)
    asyncio.run(store.save(tracker))
    window_lengths = []
    for turn_number, turn in enumerate(script()):
        windowed, full = latest_session(store, sender), latest_session(reference, sender)
        if turn_number == 120:  # an hour later: a new session, slots carried over
            for copy in (windowed, full):
                carried = [SlotSet(k, v) for k, v in copy.current_slot_values().items() if v is not None]
                for event in [ActionExecuted(ACTION_SESSION_START_NAME), SessionStarted(), *carried,
                              ActionExecuted(ACTION_LISTEN_NAME)]:
                    event.timestamp = next(clock) + 3600 if isinstance(event, SessionStarted) else next(clock)
                    copy.update(event)
            clock = itertools.count(next(clock) + 3700, 1.0)
        window_lengths.append(len(windowed.events))
        for event in [*turn, ActionExecuted(ACTION_LISTEN_NAME)]:
            if isinstance(event, ActionExecuted):
                same_decisions(domain, policy, windowed, full)
            event.timestamp = next(clock)
            windowed.update(event)
            full.update(event)
        asyncio.run(store.save(windowed))
    # A form the user stays in keeps its window open until it ends (60 turns in the first round).
    assert max(window_lengths[-100:]) < 10 * WINDOW_ACTIONS
    assert len(latest_session(reference, sender).events) > 3 * max(window_lengths[-100:])
    everything = asyncio.run(store.retrieve_full_tracker(sender))
    with store.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT count(*) FROM events WHERE sender_id = :s"), {"s": sender}).scalar()
    assert everything is not None and len(everything.events) == rows > 1000


def test_a_long_conversation_decides_the_same_on_its_window(
    trained: Tuple[Domain, FastRulePolicy], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    domain, policy = trained
    monkeypatch.setenv("TRACKER_DB_URL", f"sqlite:///{tmp_path / 'tracker.db'}")
    stores: List[UrlSQLTrackerStore] = []

    def make(cls: type) -> UrlSQLTrackerStore:
        stores.append(cls(domain=Domain.load(str(ROOT / "domain.yml"))))
        return stores[-1]

    try:
        drive(domain, policy, make)
    finally:
        for store in stores:
            store.engine.dispose()
