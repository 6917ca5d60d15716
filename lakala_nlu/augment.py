"""Training-time augmentation: extra copies of training examples as merchants mistype them.

- pinyin: the whole message typed in pinyin without an input method, with spaces between
  syllables or run together ("zhu xiao yao duo jiu", "zhuxiaoyaoduojiu");
- typo: one or two Chinese characters replaced by a homophone that also occurs in the
  training data (注销 -> 注消), as a pinyin input method gets it wrong.

Traditional script needs no copies: the normaliser folds it to simplified before any model.
Copies are made only while training (`process_training_data`); messages at inference pass
through unchanged. The choice of examples is seeded, so a training is repeatable.
"""
import random
import re
from collections import defaultdict
from typing import Any, Dict, List, Optional

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.shared.nlu.constants import ENTITIES, INTENT, TEXT
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

from lakala_nlu import pinyin
from lakala_nlu.text import normalize

_HANZI = re.compile(r"[\u4e00-\u9fff]")
# Intents whose examples are copied: a typed yes, no or hello gains nothing from pinyin copies,
# and copies of the terminal-number answers (inform) would teach nothing about words.
SKIPPED_INTENTS = {"inform"}


def homophone_table(texts: List[str]) -> Dict[str, List[str]]:
    """Toneless syllable -> the characters of the training texts read that way."""
    table: Dict[str, set] = defaultdict(set)
    for text in texts:
        for char in set(_HANZI.findall(normalize(text))):
            reading = pinyin.to_pinyin(char)
            if len(reading) == 1:
                table[reading[0]].add(char)
    return {syllable: sorted(chars) for syllable, chars in table.items() if len(chars) > 1}


def typo_variant(text: str, table: Dict[str, List[str]], rng: random.Random) -> Optional[str]:
    """The text with one or two characters swapped for homophones, or None if none can be."""
    chars = list(text)
    positions = [i for i, c in enumerate(chars) if _HANZI.match(c)]
    rng.shuffle(positions)
    changed = 0
    for i in positions:
        reading = pinyin.to_pinyin(normalize(chars[i]))
        options = [c for c in table.get(reading[0], []) if c != normalize(chars[i])] if len(reading) == 1 else []
        if options:
            chars[i] = rng.choice(options)
            changed += 1
            if changed == 2 or rng.random() < 0.5:
                break
    return "".join(chars) if changed else None


def pinyin_variant(text: str, rng: random.Random) -> Optional[str]:
    """The text as pinyin, syllables spaced or run together; None if it has no Chinese."""
    if not _HANZI.search(text):
        return None
    units = pinyin.to_pinyin(normalize(text))
    return (" " if rng.random() < 0.5 else "").join(units) if units else None


def augmented(examples: List[Message], pinyin_share: float, typo_share: float, seed: int) -> List[Message]:
    """New messages: copies of a share of the examples in each style."""
    rng = random.Random(seed)
    table = homophone_table([m.get(TEXT) or "" for m in examples])
    extra: List[Message] = []
    for message in examples:
        text = message.get(TEXT)
        if not text or not message.get(INTENT) or message.get(INTENT) in SKIPPED_INTENTS:
            continue
        variants = []
        if rng.random() < pinyin_share:
            variants.append(pinyin_variant(text, rng))
        if rng.random() < typo_share:
            variants.append(typo_variant(text, table, rng))
        for variant in variants:
            if variant and variant != text:
                data = {k: v for k, v in message.data.items() if k != ENTITIES}
                data[TEXT] = variant
                extra.append(Message(data=data))
    return extra


@DefaultV1Recipe.register(
    [DefaultV1Recipe.ComponentType.MESSAGE_FEATURIZER], is_trainable=False
)
class TrainingAugmenter(GraphComponent):
    """Adds pinyin and homophone-typo copies of training examples (see the module docstring)."""

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        return {"pinyin_share": 0.2, "typo_share": 0.2, "seed": 7}

    def __init__(self, config: Dict[str, Any]) -> None:
        self.config = {**self.get_default_config(), **config}

    @classmethod
    def create(
        cls,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> "TrainingAugmenter":
        return cls(config)

    def process_training_data(self, training_data: TrainingData) -> TrainingData:
        extra = augmented(
            training_data.intent_examples,
            self.config["pinyin_share"], self.config["typo_share"], self.config["seed"],
        )
        return training_data.merge(TrainingData(training_examples=extra)) if extra else training_data

    def process(self, messages: List[Message]) -> List[Message]:
        return messages
