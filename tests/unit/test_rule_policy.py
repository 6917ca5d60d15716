"""FastRulePolicy predicts exactly what Rasa's RulePolicy predicts, trained on the same rules."""
from pathlib import Path
from typing import Any, List, Tuple

import pytest
from rasa.core.policies.rule_policy import RulePolicy
from rasa.core.training import load_data
from rasa.engine.graph import ExecutionContext, GraphSchema
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ActionExecuted
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.shared.importers.importer import TrainingDataImporter

from lakala_nlu.rule_policy import FastRulePolicy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Domain, RulePolicy, RulePolicy, List[Any]]:
    # The domain as training sees it: with the retrieval action utter_faq from the NLU data.
    importer = TrainingDataImporter.load_from_config(
        str(ROOT / "config.yml"), str(ROOT / "domain.yml"), [str(ROOT / "data")]
    )
    domain = importer.get_domain()
    rules = load_data(str(ROOT / "data" / "rules"), domain, augmentation_factor=0)
    storage = LocalModelStorage(tmp_path_factory.mktemp("policies"))
    context = ExecutionContext(GraphSchema({}), "test")
    config = {**RulePolicy.get_default_config(), "core_fallback_threshold": 0.3,
              "core_fallback_action_name": "action_default_fallback", "enable_fallback_prediction": True}
    policies = []
    for cls in (RulePolicy, FastRulePolicy):
        policy = cls.create(config, storage, Resource(cls.__name__), context)
        policy.train(rules, domain)
        policies.append(policy)
    conversations = rules + load_data(str(ROOT / "tests" / "test_stories.yml"), domain, augmentation_factor=0)
    return domain, policies[0], policies[1], conversations


def decision_points(conversation: Any, domain: Domain) -> List[DialogueStateTracker]:
    """The conversation as it stood before each of its actions."""
    events = list(conversation.events)
    return [
        DialogueStateTracker.from_events(conversation.sender_id, events[:index], domain.slots)
        for index, event in enumerate(events)
        if isinstance(event, ActionExecuted) and index > 0
    ]


def test_the_same_rules_are_learned(trained: Any) -> None:
    _, rasas, ours, _ = trained
    assert ours.lookup == rasas.lookup
    assert len(ours.lookup["rules"]) > 50


def test_every_prediction_is_rasas(trained: Any) -> None:
    domain, rasas, ours, conversations = trained
    checked = 0
    for conversation in conversations:
        for tracker in decision_points(conversation, domain):
            expected = rasas.predict_action_probabilities(tracker, domain)
            got = ours.predict_action_probabilities(tracker, domain)
            assert got.probabilities == expected.probabilities, tracker.sender_id
            assert (got.events, got.optional_events, got.is_end_to_end_prediction, got.is_no_user_prediction) == (
                expected.events, expected.optional_events, expected.is_end_to_end_prediction,
                expected.is_no_user_prediction)
            assert got.action_metadata == expected.action_metadata
            checked += 1
    assert checked > 200


def test_the_rules_found_at_every_turn_are_rasas(trained: Any) -> None:
    """All rules that apply, not only the longest one the prediction uses, for both lookups."""
    domain, rasas, ours, conversations = trained
    compared = 0
    for conversation in conversations:
        for tracker in decision_points(conversation, domain):
            states = rasas._prediction_states(tracker, domain, False, rule_only_data=rasas._get_rule_only_data())
            for lookup in ("rules", "rules_for_loop_unhappy_path"):
                expected = RulePolicy._get_possible_keys(rasas, rasas.lookup[lookup], states)
                assert ours._get_possible_keys(ours.lookup[lookup], states) == expected, tracker.sender_id
                compared += bool(expected)
    assert compared > 200


def test_rules_of_every_shape_are_found_as_rasa_finds_them(trained: Any) -> None:
    """Rule shapes this bot's data lacks: no previous action (a conversation start), an action
    given by text, no intent, and a slot that must not be set."""
    import itertools
    import json

    _, rasas, ours, _ = trained
    previous = [None, {"action_name": "action_listen"}, {"action_name": "utter_greet"}, {"action_text": "hi"}]
    users = [None, {"intent": "greet"}, {"intent": "ask_deposit"}, {"text": "hi"}]
    slots = [None, {"terminal_id": "should_not_be_set"}, {"terminal_id": (1.0,)}]

    def state(prev: Any, user: Any, slot: Any) -> dict:
        parts = {"prev_action": prev, "user": user, "slots": slot}
        return {kind: value for kind, value in parts.items() if value}

    shapes = [state(*combo) for combo in itertools.product(previous, users, slots)]
    rule_states = [[shape] for shape in shapes] + [[shapes[5], shape] for shape in shapes[::4]]
    lookup = {json.dumps(states, sort_keys=True): "utter_x" for states in rule_states}
    found = 0
    for history in [[shape] for shape in shapes] + [[shapes[5], shape] for shape in shapes]:
        expected = RulePolicy._get_possible_keys(rasas, lookup, history)
        assert ours._get_possible_keys(lookup, history) == expected, history
        found += len(expected)
    assert found > len(shapes)
