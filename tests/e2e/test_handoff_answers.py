"""The callback form on answers a merchant would type, written by someone who never saw data/
(tests/blind/callback_answers.tsv), on the real servers: each topic is taken as a topic, each
valid mobile number becomes a ticket and each invalid one is asked again, each consent is read
as the yes or no it is. A wrong reading of consent is the costly error (a number kept without
it), so a "no" read as "yes" fails the test outright; the rest must be right at least 90%."""
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from tests.support.expect import reply, said, says
from tests.support.servers import MODEL, ROOT, Bot

ANSWERS = ROOT / "tests" / "blind" / "callback_answers.tsv"
MIN_ACCURACY = 0.9


def cases() -> List[Tuple[str, str, str]]:
    rows = []
    for line in Path(ANSWERS).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            step, message, expected = line.split("\t")
            rows.append((step, message, expected))
    return rows


@pytest.fixture(scope="module")
def bot(tmp_path_factory) -> Iterator[Bot]:
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train`")
    running = Bot(tmp_path_factory.mktemp("answers")).start()
    yield running
    running.stop()


def up_to(bot: Bot, step: str) -> str:
    """A new conversation at the question of `step`."""
    sender = f"answers-{uuid.uuid4().hex[:10]}"
    bot.texts(sender, "转人工")
    assert said(bot.texts(sender, "好的"), "utter_ask_callback_topic")
    if step == "topic":
        return sender
    bot.texts(sender, "想问押金的事")
    if step == "consent":
        return sender
    assert said(bot.texts(sender, "同意"), "utter_ask_callback_phone")
    return sender


def outcome(bot: Bot, step: str, message: str) -> str:
    sender = up_to(bot, step)
    texts = bot.texts(sender, message)
    if step == "topic":
        return "topic" if said(texts, "utter_ask_callback_consent") else f"not a topic: {texts}"
    if step == "phone":
        if said(texts, "utter_callback_created"):
            return "valid"
        return "invalid" if says(texts, reply("utter_callback_phone_invalid"), reply("utter_ask_callback_phone")) \
            else f"other: {texts}"
    if said(texts, "utter_ask_callback_phone"):
        return "yes"
    return "no" if said(texts, "utter_callback_declined") else f"unclear: {texts}"


def test_blind_answers_to_the_callback_questions(bot):
    results: Dict[str, List[Tuple[str, str, str]]] = {}
    for step, message, expected in cases():
        results.setdefault(step, []).append((message, expected, outcome(bot, step, message)))
    wrong = [(step, m, e, got) for step, rows in results.items() for m, e, got in rows if got != e]
    total = sum(len(rows) for rows in results.values())
    accuracy = 1 - len(wrong) / total
    print(f"\ncallback answers: {total - len(wrong)}/{total} right ({accuracy:.3f}); per step: "
          + ", ".join(f"{step} {sum(got == e for _, e, got in rows)}/{len(rows)}" for step, rows in results.items()))
    for row in wrong:
        print("  wrong:", row)
    assert not [row for row in wrong if row[0] == "consent" and row[2] == "no" and row[3] == "yes"], wrong
    assert accuracy >= MIN_ACCURACY, wrong
