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
