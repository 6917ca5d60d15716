"""The NLU test set is held out: no test utterance may also be a training example.

Compared after the pipeline's own normalisation (full-width, traditional script),
lower case and without punctuation or spaces, so "hi~" and "hi" or "再會" and "再会"
count as the same utterance.
"""
import re
from pathlib import Path
from typing import Dict, List

from rasa.shared.nlu.training_data.loading import load_data

from lakala_nlu.text import normalize

ROOT = Path(__file__).resolve().parents[2]
_IGNORED = re.compile(r"[\s\W_]+")


def _key(text: str) -> str:
    return _IGNORED.sub("", normalize(text).lower())


def _utterances(path: Path) -> Dict[str, List[str]]:
    by_key: Dict[str, List[str]] = {}
    for example in load_data(str(path)).intent_examples:
        by_key.setdefault(_key(example.get("text")), []).append(example.get("text"))
    return by_key


def test_key_ignores_what_the_model_ignores():
    assert _key("Hi~") == _key("hi") == "hi"
    assert _key("再會！") == _key("再会")
    assert _key("押金 能退吗？") == _key("押金能退吗")
    assert _key("押金能退吗") != _key("押金怎么退")


def test_no_test_utterance_is_a_training_example():
    training = _utterances(ROOT / "data" / "nlu")
    test = _utterances(ROOT / "tests" / "nlu_test.yml")
    assert len(test) > 300, "the test set did not load"
    leaked = sorted(f"{test[key][0]} (data: {training[key][0]})" for key in test if key in training)
    assert leaked == [], f"{len(leaked)} test utterances are also training examples: {leaked}"

