"""Custom Rasa graph components: input normalisation before the tokenizer and an input
guard after the classifiers."""
from typing import Any, Dict, List, Optional

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.constants import RESPONSE_SELECTOR_PROPERTY_NAME
from rasa.shared.constants import DEFAULT_NLU_FALLBACK_INTENT_NAME
from rasa.shared.nlu.constants import (
    ENTITIES,
    ENTITY_ATTRIBUTE_END,
    ENTITY_ATTRIBUTE_START,
    INTENT,
    INTENT_NAME_KEY,
    INTENT_RANKING_KEY,
    PREDICTED_CONFIDENCE_KEY,
    TEXT,
)
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

from lakala_common.log_masking import DIGIT_RUN
from lakala_nlu import spacy_zh  # noqa: F401  registers the jieba tokenizer for SpacyNLP
from lakala_nlu.text import MAX_MESSAGE_CHARS, input_issue, normalize

INPUT_ISSUE = "input_issue"
FALLBACK = {INTENT_NAME_KEY: DEFAULT_NLU_FALLBACK_INTENT_NAME, PREDICTED_CONFIDENCE_KEY: 1.0}


def is_long_number(run: str) -> bool:
    """A phone number (11 digits from 1, or with China's code 86 / 0086) or a card or ID number
    (15 digits or more): a run of digits no terminal number or phone tail is part of."""
    digits = "".join(character for character in run if character.isdigit())
    return ((len(digits) == 11 and digits.startswith("1")) or (len(digits) == 13 and digits.startswith("861"))
            or len(digits) >= 15)


def without_pieces_of_longer_numbers(text: str, entities: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The entities, less any terminal number or phone tail cut out of a phone, card or ID
    number: the last 8 or 4 digits of 138 0013 8000 are neither. (A terminal number and a
    tail typed together, 30091254 6721, stay.)"""
    runs = [(m.start(), m.end()) for m in DIGIT_RUN.finditer(text or "") if is_long_number(m.group(0))]
    kept = []
    for entity in entities:
        start, end = entity.get(ENTITY_ATTRIBUTE_START), entity.get(ENTITY_ATTRIBUTE_END)
        if isinstance(start, int) and isinstance(end, int) and any(
            run_start <= start and end <= run_end for run_start, run_end in runs
        ):
            continue
        kept.append(entity)
    return kept


@DefaultV1Recipe.register(
    [DefaultV1Recipe.ComponentType.MESSAGE_FEATURIZER], is_trainable=False
)
class ChineseTextNormalizer(GraphComponent):
    """Folds full-width and traditional characters so one model serves both scripts."""

    @classmethod
    def create(
        cls,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> "ChineseTextNormalizer":
        return cls()

    @staticmethod
    def _normalize(message: Message, at_inference: bool) -> None:
        text = message.get(TEXT)
        if text is None:
            return
        if at_inference:
            issue = input_issue(text)
            if issue:
                message.set(INPUT_ISSUE, issue, add_to_output=True)
            # Keep the models' work bounded whatever the user pastes.
            text = text[:MAX_MESSAGE_CHARS]
        message.set(TEXT, normalize(text))

    def process_training_data(self, training_data: TrainingData) -> TrainingData:
        for example in training_data.training_examples:
            self._normalize(example, at_inference=False)
        return training_data

    def process(self, messages: List[Message]) -> List[Message]:
        for message in messages:
            self._normalize(message, at_inference=True)
        return messages


@DefaultV1Recipe.register(
    [DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER], is_trainable=False
)
class InputGuard(GraphComponent):
    """Sends empty, oversized and non-Chinese messages to the fallback instead of guessing,
    and drops a terminal number or phone tail found inside a longer number (a phone number).

    A foreign-script sentence keeps the classifier's intent when the classifier is sure
    of it (the pinyin featurizer reads English domain words such as deposit or cancel);
    otherwise the merchant is asked to write in Chinese."""

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        # faq_min_confidence: an FAQ answer needs P(faq) x P(key) at least this, else the
        # merchant gets "did you mean" (an unrelated article section is worse than asking).
        # cash_out_min_confidence: when the fallback fired and cash-out is the best intent
        # at least this sure, the bot refuses (a wrong refusal costs less than helping).
        # foreign_min_confidence: a foreign-script sentence is answered only this sure.
        return {"faq_min_confidence": 0.0, "cash_out_min_confidence": 1.01, "foreign_min_confidence": 0.6}

    def __init__(self, config: Optional[Dict[str, Any]] = None) -> None:
        self.config = {**self.get_default_config(), **(config or {})}

    @classmethod
    def create(
        cls,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> "InputGuard":
        return cls(config)

    @staticmethod
    def _set_intent(message: Message, intent: Dict[str, Any]) -> None:
        intent = dict(intent)
        ranking = [intent] + [
            entry
            for entry in message.get(INTENT_RANKING_KEY) or []
            if entry.get(INTENT_NAME_KEY) != intent[INTENT_NAME_KEY]
        ]
        message.set(INTENT, intent, add_to_output=True)
        message.set(INTENT_RANKING_KEY, ranking, add_to_output=True)

    def _confidence_rules(self, message: Message) -> None:
        intent = message.get(INTENT) or {}
        name = intent.get(INTENT_NAME_KEY)
        if name == "faq":
            selector = (message.get(RESPONSE_SELECTOR_PROPERTY_NAME) or {}).get("faq") or {}
            key_confidence = (selector.get("response") or {}).get(PREDICTED_CONFIDENCE_KEY, 1.0)
            if (intent.get(PREDICTED_CONFIDENCE_KEY) or 0.0) * key_confidence < self.config["faq_min_confidence"]:
                self._set_intent(message, FALLBACK)
        elif name == DEFAULT_NLU_FALLBACK_INTENT_NAME:
            ranked = [e for e in message.get(INTENT_RANKING_KEY) or []
                      if e.get(INTENT_NAME_KEY) != DEFAULT_NLU_FALLBACK_INTENT_NAME]
            if (ranked and ranked[0].get(INTENT_NAME_KEY) == "ask_cash_out"
                    and (ranked[0].get(PREDICTED_CONFIDENCE_KEY) or 0.0) >= self.config["cash_out_min_confidence"]):
                self._set_intent(message, dict(ranked[0]))

    def process(self, messages: List[Message]) -> List[Message]:
        for message in messages:
            entities = message.get(ENTITIES) or []
            if entities:
                kept = without_pieces_of_longer_numbers(message.get(TEXT) or "", entities)
                if len(kept) != len(entities):
                    message.set(ENTITIES, kept, add_to_output=True)
            issue: Optional[str] = message.get(INPUT_ISSUE)
            if not issue:
                self._confidence_rules(message)
                continue
            if issue == "foreign":
                intent = message.get(INTENT) or {}
                if (intent.get(INTENT_NAME_KEY) not in (None, DEFAULT_NLU_FALLBACK_INTENT_NAME)
                        and (intent.get(PREDICTED_CONFIDENCE_KEY) or 0.0) >= self.config["foreign_min_confidence"]):
                    continue
            self._set_intent(message, FALLBACK)
        return messages
