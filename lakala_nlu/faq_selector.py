"""A light response selector for the `faq/...` retrieval intent.

Rasa's ResponseSelector is a TensorFlow model: most of the training time and a per-message
cost of a TensorFlow model. Our FAQ keys are short and distinct, and a logistic
regression over the same sparse word and character features picks them as well on
the held-out test set (see bench/results/latest.md) in a fraction of the time.
It writes the same `response_selector` output as Rasa's, so `utter_faq`, the rules
and `rasa test` work unchanged.
"""
import logging
from typing import Any, Dict, List, Optional, Type

import numpy as np
from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.constants import (
    RESPONSE_SELECTOR_PREDICTION_KEY,
    RESPONSE_SELECTOR_PROPERTY_NAME,
    RESPONSE_SELECTOR_RANKING_KEY,
    RESPONSE_SELECTOR_RESPONSES_KEY,
    RESPONSE_SELECTOR_RETRIEVAL_INTENTS,
    RESPONSE_SELECTOR_UTTER_ACTION_KEY,
)
from rasa.nlu.featurizers.featurizer import Featurizer
from rasa.shared.nlu.constants import INTENT, INTENT_RESPONSE_KEY, PREDICTED_CONFIDENCE_KEY, TEXT
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData
from rasa.shared.nlu.training_data.util import intent_response_key_to_template_key
from rasa.shared.utils.io import dump_obj_as_json_to_file, read_json_file
from sklearn.linear_model import LogisticRegression

from lakala_nlu.linear import load_linear, predict_proba, save_linear, sentence_features

logger = logging.getLogger(__name__)

MODEL_FILE = "faq_selector.npz"  # lakala_nlu.linear.save_linear: arrays, no pickle
META_FILE = "faq_selector.json"


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER, is_trainable=True)
class FaqSelector(GraphComponent):
    """Chooses the `faq/...` answer with a logistic regression on sparse features."""

    @classmethod
    def required_components(cls) -> List[Type]:
        return [Featurizer]

    @staticmethod
    def required_packages() -> List[str]:
        return ["sklearn"]

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        return {"retrieval_intent": "faq", "C": 10.0, "max_iter": 500, "ranking_length": 5}

    def __init__(
        self,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        clf: Optional[LogisticRegression] = None,
        responses: Optional[Dict[str, List[Dict[str, Any]]]] = None,
        retrieval_intents: Optional[List[str]] = None,
    ) -> None:
        self.config = {**self.get_default_config(), **config}
        self._model_storage = model_storage
        self._resource = resource
        self.clf = clf
        self.responses = responses or {}
        self.retrieval_intents = retrieval_intents or []

    @classmethod
    def create(
        cls,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> "FaqSelector":
        return cls(config, model_storage, resource)

    def train(self, training_data: TrainingData) -> Resource:
        intent = self.config["retrieval_intent"]
        examples = [
            e for e in training_data.intent_examples
            if e.get(INTENT) == intent and e.get(INTENT_RESPONSE_KEY) and e.get(TEXT)
        ]
        self.retrieval_intents = sorted(training_data.retrieval_intents)
        self.responses = {
            key: value for key, value in training_data.responses.items()
            if key.startswith(f"utter_{intent}/")
        }
        if len({e.get(INTENT_RESPONSE_KEY) for e in examples}) < 2:
            logger.warning("FaqSelector: fewer than two %s answers to choose from; not trained", intent)
            return self._resource
        self.clf = LogisticRegression(
            C=self.config["C"], max_iter=self.config["max_iter"], class_weight="balanced"
        )
        self.clf.fit(sentence_features(examples), [e.get(INTENT_RESPONSE_KEY) for e in examples])
        self.persist()
        return self._resource

    def persist(self) -> None:
        with self._model_storage.write_to(self._resource) as model_dir:
            save_linear(self.clf, model_dir / MODEL_FILE)
            dump_obj_as_json_to_file(
                model_dir / META_FILE,
                {"responses": self.responses, "retrieval_intents": self.retrieval_intents},
            )

    @classmethod
    def load(
        cls,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
        **kwargs: Any,
    ) -> "FaqSelector":
        try:
            with model_storage.read_from(resource) as model_dir:
                clf = load_linear(model_dir / MODEL_FILE)
                meta = read_json_file(model_dir / META_FILE)
        except (ValueError, OSError, KeyError) as error:
            logger.warning("FaqSelector could not be loaded (%s); FAQ answers are off", error)
            return cls(config, model_storage, resource)
        return cls(config, model_storage, resource, clf, meta["responses"], meta["retrieval_intents"])

    def process(self, messages: List[Message]) -> List[Message]:
        if self.clf is None:
            return messages
        probabilities = predict_proba(self.clf, sentence_features(messages, self.clf.n_features_in_))
        for message, row in zip(messages, probabilities, strict=False):
            self._set_prediction(message, row)
        return messages

    def _set_prediction(self, message: Message, row: np.ndarray) -> None:
        order = np.argsort(-row)[: max(1, self.config["ranking_length"])]
        keys = [str(self.clf.classes_[i]) for i in order]
        template = intent_response_key_to_template_key(keys[0])
        prediction = {
            RESPONSE_SELECTOR_PREDICTION_KEY: {
                RESPONSE_SELECTOR_RESPONSES_KEY: self.responses.get(template, []),
                PREDICTED_CONFIDENCE_KEY: float(row[order[0]]),
                INTENT_RESPONSE_KEY: keys[0],
                RESPONSE_SELECTOR_UTTER_ACTION_KEY: template,
            },
            RESPONSE_SELECTOR_RANKING_KEY: [
                {PREDICTED_CONFIDENCE_KEY: float(row[i]), INTENT_RESPONSE_KEY: key}
                for i, key in zip(order, keys, strict=False)
            ],
        }
        properties = message.get(RESPONSE_SELECTOR_PROPERTY_NAME, {})
        properties[RESPONSE_SELECTOR_RETRIEVAL_INTENTS] = self.retrieval_intents
        properties[self.config["retrieval_intent"]] = prediction
        message.set(RESPONSE_SELECTOR_PROPERTY_NAME, properties, add_to_output=True)
