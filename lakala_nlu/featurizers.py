"""Sparse featurizers. Rasa's CountVectorsFeaturizer, answering a message with only the features this
pipeline reads.

For a message's text Rasa computes sequence features (a count vector per token) and
sentence features (one for the whole text). The classifiers here read the sentence
features only, and at inference the per-token vectors, which nothing reads, were computed on
every message. Training is Rasa's,
unchanged; at inference the text's sentence features are computed exactly as Rasa
computes them, and every other attribute goes through Rasa's own code.
"""
import json
from typing import Any, Dict, List, Optional

import numpy as np
from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.featurizers.sparse_featurizer.count_vectors_featurizer import CountVectorsFeaturizer
from rasa.nlu.featurizers.sparse_featurizer.sparse_featurizer import SparseFeaturizer
from rasa.shared.nlu.constants import TEXT
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData
from scipy.sparse import coo_matrix

from lakala_nlu import pinyin


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.MESSAGE_FEATURIZER, is_trainable=True)
class SentenceCountVectorsFeaturizer(CountVectorsFeaturizer):
    """CountVectorsFeaturizer whose `process` adds no sequence features for the text."""

    def process(self, messages: List[Message]) -> List[Message]:
        vectorizer = (self.vectorizers or {}).get(TEXT)
        if vectorizer is None:
            return super().process(messages)
        for message in messages:
            for attribute in self._attributes:
                tokens = self._get_processed_message_tokens_by_attribute(message, attribute)
                if attribute == TEXT:
                    sentence = None
                    if tokens:
                        sentence = vectorizer.transform([" ".join(tokens)])
                        sentence.sort_indices()
                        sentence = sentence.tocoo()
                    self.add_features_to_message(None, sentence, attribute, message)
                else:
                    sequence, sentence = self._create_features(attribute, [tokens])
                    self.add_features_to_message(sequence[0], sentence[0], attribute, message)
        return messages


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.MESSAGE_FEATURIZER, is_trainable=True)
class PinyinFeaturizer(SparseFeaturizer, GraphComponent):
    """Sentence features from the message read as toneless pinyin (lakala_nlu/pinyin.py):
    counts of syllable n-grams. Homophone typos, pinyin typed without an input method and
    mapped English words then share features with the Chinese words they stand for."""

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        return {**SparseFeaturizer.get_default_config(), "min_ngram": 1, "max_ngram": 2}

    @classmethod
    def validate_config(cls, config: Dict[str, Any]) -> None:
        if not 1 <= config.get("min_ngram", 1) <= config.get("max_ngram", 2):
            raise ValueError("PinyinFeaturizer needs 1 <= min_ngram <= max_ngram")

    def __init__(
        self, config: Dict[str, Any], model_storage: ModelStorage, resource: Resource,
        name: str, vocabulary: Optional[Dict[str, int]] = None,
    ) -> None:
        super().__init__(name, config)
        self._model_storage = model_storage
        self._resource = resource
        self.vocabulary: Dict[str, int] = vocabulary or {}

    @classmethod
    def create(
        cls, config: Dict[str, Any], model_storage: ModelStorage, resource: Resource,
        execution_context: ExecutionContext,
    ) -> "PinyinFeaturizer":
        return cls(config, model_storage, resource, execution_context.node_name)

    def _ngrams(self, text: Optional[str]) -> List[str]:
        units = pinyin.to_pinyin(text or "")
        low, high = self._config["min_ngram"], self._config["max_ngram"]
        return [
            "_".join(units[i:i + n]) for n in range(low, high + 1) for i in range(len(units) - n + 1)
        ]

    def train(self, training_data: TrainingData) -> Resource:
        grams = sorted({g for m in training_data.training_examples for g in self._ngrams(m.get(TEXT))})
        self.vocabulary = {g: i for i, g in enumerate(grams)}
        with self._model_storage.write_to(self._resource) as model_dir:
            (model_dir / "pinyin_vocabulary.json").write_text(json.dumps(grams, ensure_ascii=False))
        return self._resource

    @classmethod
    def load(
        cls, config: Dict[str, Any], model_storage: ModelStorage, resource: Resource,
        execution_context: ExecutionContext, **kwargs: Any,
    ) -> "PinyinFeaturizer":
        try:
            with model_storage.read_from(resource) as model_dir:
                grams = json.loads((model_dir / "pinyin_vocabulary.json").read_text())
        except (ValueError, OSError):
            grams = []
        pinyin.syllables()  # build the syllable table at start-up, not on the first message
        return cls(config, model_storage, resource, execution_context.node_name, {g: i for i, g in enumerate(grams)})

    def _row(self, text: Optional[str]) -> coo_matrix:
        counts: Dict[int, int] = {}
        for gram in self._ngrams(text):
            index = self.vocabulary.get(gram)
            if index is not None:
                counts[index] = counts.get(index, 0) + 1
        columns = sorted(counts)
        data = np.array([counts[c] for c in columns], dtype=np.float64)
        return coo_matrix((data, (np.zeros(len(columns), dtype=np.int64), columns)), shape=(1, len(self.vocabulary)))

    def _featurize(self, messages: List[Message]) -> List[Message]:
        if not self.vocabulary:
            return messages
        for message in messages:
            if message.get(TEXT):
                self.add_features_to_message(None, self._row(message.get(TEXT)), TEXT, message)
        return messages

    def process_training_data(self, training_data: TrainingData) -> TrainingData:
        self._featurize(training_data.training_examples)
        return training_data

    def process(self, messages: List[Message]) -> List[Message]:
        return self._featurize(messages)
