"""Long conversations through the real servers.

The tracker store reads a window of each conversation (lakala_server/tracker_store.py): a
conversation of hundreds of turns, mixing FAQ questions, terminal lookups with a demo terminal,
verification, digressions inside the form, typed buttons, clarifications and cancellations, gets
the same replies, turn by turn, as from a server that replays the whole session
(FullHistorySQLTrackerStore).

And when another server saves a conversation while this one is answering it, the save is
refused and the user gets the apology, not an answer worked out on the old state.
"""
import asyncio
import itertools
import json
import urllib.error
import uuid
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
import sqlalchemy as sa
import yaml
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ActionExecuted, UserUttered

from lakala_server.tracker_store import UrlSQLTrackerStore
from tests.support.expect import assert_said
from tests.support.relay import TcpRelay
from tests.support.servers import DOMAIN, MODEL, ROOT, Bot

FAILURE = DOMAIN["responses"]["utter_backend_failed"][0]

# One round of a merchant's questions; the conversation repeats it with the FAQ questions rotating.
FAQS = ["押金能退吗", "注销要多久", "多久不用会自动注销", "沉睡了怎么激活", "POS机的流量卡是什么",
        "提前注销有违约金吗", "拉卡拉账户怎么注销", "不用了需要注销吗", "一清和二清是什么意思"]
ROUND = [
    "你好", "{faq}", "帮我查一下终端状态", "{faq}", "K7306118", "{faq}", "0839", "押金能退吗",
    "现在注销要违约金吗", "什么时候会被自动注销", "你是机器人吗", "谢谢", "啊啊啊", "查询终端状态", "算了",
    "{faq}", "今天天气怎么样", "帮我查一下终端30091254", "6721", "押金能退吗", "{faq}", "转人工", "再见",
]


def conversation(turns: int) -> List[str]:
    faqs = itertools.cycle(FAQS)
    messages = itertools.cycle(ROUND)
    return [message.format(faq=next(faqs)) if "{faq}" in message else message
            for message in itertools.islice(messages, turns)]


def started_bot(workdir: Path, store: str) -> Bot:
    bot = Bot(workdir)
    endpoints = workdir / "endpoints.yml"
    config = yaml.safe_load(endpoints.read_text())
    config["tracker_store"]["type"] = store
    endpoints.write_text(yaml.safe_dump(config))
    return bot


@pytest.fixture(scope="module")
def bots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Bot, Bot]]:
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train` (make e2e does)")
    windowed = started_bot(tmp_path_factory.mktemp("windowed"), "lakala_server.tracker_store.UrlSQLTrackerStore")
    full = started_bot(tmp_path_factory.mktemp("full"), "lakala_server.tracker_store.FullHistorySQLTrackerStore")
    try:
        windowed.start()
        full.start()
        yield windowed, full
    finally:
        windowed.stop()
        full.stop()


def test_a_long_conversation_gets_the_same_replies_as_with_the_whole_history(bots: Tuple[Bot, Bot]) -> None:
    windowed, full = bots
    sender = f"long-{uuid.uuid4().hex[:8]}"
    messages = conversation(320)
    for number, message in enumerate(messages):
        ours, reference = windowed.send(sender, message), full.send(sender, message)
        assert ours == reference, f"turn {number}: {message!r}"
        assert ours, f"turn {number}: {message!r} got no reply"
    # The windowed server read a short window; the whole conversation is stored all the same.
    rows = stored_events(windowed, f"rest:{sender}")
    assert rows == stored_events(full, f"rest:{sender}")
    assert len([text for kind, text in rows if kind == "user"]) == len(messages)  # (digits masked in some)


def stored_events(bot: Bot, sender: str) -> List[Tuple[str, str]]:
    """(type, what the event says) of every stored event: the user's and the bot's texts, the
    actions, the slots set (their values hold a signed, timed verification here, which differs
    between two servers) and the loops."""
    engine = sa.create_engine(bot.env["TRACKER_DB_URL"])
    try:
        with engine.connect() as connection:
            query = sa.text("SELECT type_name, data FROM events WHERE sender_id = :s ORDER BY id")
            rows = [(kind, json.loads(data)) for kind, data in connection.execute(query, {"s": sender})]
    finally:
        engine.dispose()
    return [(kind, str(data.get("text") or data.get("name"))) for kind, data in rows]


# --- another server saves the conversation meanwhile ----------------------------------------------------------


def test_a_message_answered_from_a_stale_read_gets_the_apology(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the server waits for the action server, another server saves the same
    conversation (here: a store in this process appends a turn). The late save is refused:
    the user gets the apology (REST: with 503), nothing of that turn is stored, and the next message is
    answered from the conversation as the other server left it."""
    bot = Bot(tmp_path)
    relay = TcpRelay("127.0.0.1", bot.action_port)
    endpoints = tmp_path / "endpoints.yml"
    config = yaml.safe_load(endpoints.read_text())
    config["action_endpoint"]["url"] = f"http://127.0.0.1:{relay.port}/webhook"
    endpoints.write_text(yaml.safe_dump(config))
    sender = f"stale-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TRACKER_DB_URL", bot.env["TRACKER_DB_URL"])
    monkeypatch.setenv("TRACKER_RETENTION_DAYS", "0")
    other = UrlSQLTrackerStore(domain=Domain.load(str(ROOT / "domain.yml")))
    try:
        bot.start()
        assert_said(bot.texts(sender, "帮我查一下终端状态"), "utter_ask_terminal_id")
        before = stored_events(bot, f"rest:{sender}")

        relay.before_request = lambda: other_server_answers(other, f"rest:{sender}")
        with pytest.raises(urllib.error.HTTPError) as refused:  # the form asks the action server to check it
            bot.send(sender, "K7306118")
        assert relay.before_request is None, "the action server was not called"
        # 503 with the apology: the message was not kept, and a client may send it again.
        assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "2"
        assert json.loads(refused.value.read()) == [{"recipient_id": f"rest:{sender}", **FAILURE}]
        after = stored_events(bot, f"rest:{sender}")
        # The other server's turn only, nothing of the refused one.
        assert after[len(before):] == [("user", "另一台服务器收到的"), ("action", "utter_greet"),
                                       ("action", "action_listen")]

        # The user sends it again: answered from the conversation as it now is.
        assert_said(bot.texts(sender, "K7306118"), "utter_ask_phone_tail")
    finally:
        bot.stop()
        relay.close()
        other.engine.dispose()


def other_server_answers(store: UrlSQLTrackerStore, sender: str) -> None:
    """What another Rasa server on the same database does with a message: read, answer, save."""
    tracker = asyncio.run(store.retrieve(sender))
    assert tracker is not None
    tracker.update(UserUttered("另一台服务器收到的", intent={"name": "greet", "confidence": 0.9}))
    tracker.update(ActionExecuted("utter_greet"))
    tracker.update(ActionExecuted("action_listen"))
    asyncio.run(store.save(tracker))
