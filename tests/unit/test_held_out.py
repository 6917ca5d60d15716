"""Evaluation sets are held out: no utterance of the NLU test set, the blind set or the
merchant dev set (../shared/eval) may be a training example or a near copy of one
(within 2 edits, or contained in one: tests/support/overlap.py)."""
from pathlib import Path
from typing import List

import pytest
from rasa.shared.nlu.training_data.loading import load_data

from tests.support.overlap import key, near_copies, near_copy

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT.parent / "shared" / "eval" / "merchant_dev.tsv"


def _tsv_messages(path: Path) -> List[str]:
    return [
        line.split("\t")[0]
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _training() -> List[str]:
    return [example.get("text") for example in load_data(str(ROOT / "data" / "nlu")).intent_examples]


def test_key_ignores_what_the_model_ignores():
    assert key("Hi~") == key("hi") == "hi"
    assert key("再會！") == key("再会")
    assert key("押金 能退吗？") == key("押金能退吗")


@pytest.mark.parametrize(
    "a,b,near",
    [
        ("88", "886", True),  # one edit
        ("thx", "thx啦", True),
        ("转人工", "转接人工", True),
        ("押金能退吗", "押金能不能退吗", True),  # two edits
        ("pos机怎么注销", "pos机怎么注销啊急急急", True),  # contained, at least half as long
        ("押金", "注销", False),  # two edits replace the whole word
        ("押金", "押金什么时候能退回来", False),  # a word inside a long question
        ("押金能退吗", "违约金怎么算", False),
    ],
)
def test_near_copy_definition(a, b, near):
    assert near_copy(key(a), key(b)) is near
    assert near_copy(key(b), key(a)) is near


def _assert_held_out(name: str, utterances: List[str], minimum: int) -> None:
    assert len(utterances) >= minimum, f"the {name} did not load"
    leaked = near_copies(utterances, _training())
    shown = [f"{test} (data: {train})" for test, train in leaked[:20]]
    assert leaked == [], f"{len(leaked)} {name} utterances are near copies of training examples: {shown}"


def test_nlu_test_set_is_held_out():
    test = [example.get("text") for example in load_data(str(ROOT / "tests" / "nlu_test.yml")).intent_examples]
    _assert_held_out("NLU test set", test, 150)


def test_blind_set_is_held_out():
    _assert_held_out("blind set", _tsv_messages(ROOT / "tests" / "blind" / "blind_set.tsv"), 300)


def test_dev_set_is_held_out():
    assert DEV.exists(), f"{DEV} is missing"
    _assert_held_out("merchant dev set", _tsv_messages(DEV), 200)


def test_handoff_blind_set_is_held_out():
    _assert_held_out("handoff blind set", _tsv_messages(ROOT / "tests" / "blind" / "handoff_set.tsv"), 60)
