"""Servers for the WeChat channel tests: the stand-in WeChat API, the channel in front of a
scripted agent, and the real Rasa + action servers started with credentials.wechat.yml (with
and without an AppSecret); and what the tests read from them."""
import json
import os
import re
import sqlite3
import threading
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple
from urllib.parse import quote

import pytest

from lakala_server.wechat.channel import WECHAT_PREFIX
from lakala_server.wechat.simulator import FakeWeChatAPI, WeChatSimulator
from tests.support.expect import assert_said, reply
from tests.support.servers import BIN, MODEL, ROOT, Bot, Process, free_port

# Well-formed, made-up settings: a test never talks to a real account.
SETTINGS = {
    "WECHAT_TOKEN": "lakalaTestToken2024",
    "WECHAT_APPID": "wx5c2f6d7e8a9b0c1d",
    "WECHAT_ENCODING_AES_KEY": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    "WECHAT_APPSECRET": "0123456789abcdef0123456789abcdef",
}
OPTION_LINE = re.compile(r"^回复 (\d+) (.+)$")
# What the lookup of demo terminal 30091254 says, in one turn: status, deposit, fee.
LOOKUP_30091254 = (
    reply("utter_status_active", terminal_id="30091254"),
    reply("utter_deposit_after_deregistration", terminal_id="30091254", deposit=299),
    reply("utter_fee_due", fee=200),
)


@pytest.fixture(scope="session", autouse=True)
def one_process() -> Iterator[None]:
    """These tests cover the channel as one process with its state in memory, even where
    REDIS_URL is set; tests/cluster covers it on replicas sharing Redis."""
    saved = os.environ.pop("REDIS_URL", None)
    yield
    if saved is not None:
        os.environ["REDIS_URL"] = saved


def simulator(url: str, mode: str = "safe", **overrides: str) -> WeChatSimulator:
    settings = {**SETTINGS, **overrides}
    return WeChatSimulator(url, settings["WECHAT_TOKEN"], settings["WECHAT_APPID"],
                           settings["WECHAT_ENCODING_AES_KEY"], mode=mode)


def new_user() -> str:
    return "o" + uuid.uuid4().hex[:27]


def split_reply(reply: str) -> Tuple[List[str], List[Tuple[int, str]]]:
    """A WeChat reply as the bot's message texts and its numbered options."""
    texts, options = [], []
    for block in reply.split("\n\n"):
        lines = block.split("\n")
        while lines and OPTION_LINE.match(lines[-1]):
            number, title = OPTION_LINE.match(lines.pop()).groups()
            options.insert(0, (int(number), title))
        if lines:
            texts.append("\n".join(lines))
    return texts, sorted(options)


class AgentServer:
    """tests/wechat/fake_agent.py in its own process."""

    def __init__(self, workdir: Path, api: Optional[FakeWeChatAPI] = None, message_mode: str = "safe"):
        self.port = free_port()
        env = {**os.environ, **SETTINGS, "PYTHONPATH": str(ROOT), "WECHAT_MESSAGE_MODE": message_mode}
        if api is None:
            env["WECHAT_APPSECRET"] = ""
        else:
            env["WECHAT_API_BASE"] = api.base_url
        self.api = api
        self.url = f"http://127.0.0.1:{self.port}/webhooks/wechat/webhook"
        self.process = Process("fake_agent" + ("_api" if api else ""),
                               [str(BIN / "python"), "-m", "tests.wechat.fake_agent", str(self.port)],
                               env, workdir, f"http://127.0.0.1:{self.port}/webhooks/wechat/")

    def received(self, openid: str) -> List[Dict]:
        """What the bot behind the channel received from this WeChat user."""
        url = f"http://127.0.0.1:{self.port}/test/received?sender={quote(WECHAT_PREFIX + openid)}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.loads(answer.read())

    def calls(self) -> Dict[str, int]:
        """How often the channel has checked a signature, decrypted or parsed XML so far."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/test/calls", timeout=5) as answer:
            return json.loads(answer.read())

    def sim(self, mode: str = "safe", **overrides: str) -> WeChatSimulator:
        return simulator(self.url, mode, **overrides)


@pytest.fixture(scope="module")
def fake_api() -> Iterator[FakeWeChatAPI]:
    api = FakeWeChatAPI(SETTINGS["WECHAT_APPID"], SETTINGS["WECHAT_APPSECRET"]).start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Iterator[AgentServer]:
    """The channel without an AppSecret: no customer-service API, retries only."""
    server = AgentServer(tmp_path_factory.mktemp("agent"))
    server.process.start(timeout=60)
    yield server
    server.process.stop()


@pytest.fixture(scope="module")
def plain_agent(tmp_path_factory) -> Iterator[AgentServer]:
    """The channel of an account in plaintext mode (明文模式)."""
    server = AgentServer(tmp_path_factory.mktemp("plain_agent"), message_mode="plaintext")
    server.process.start(timeout=60)
    yield server
    server.process.stop()


@pytest.fixture(scope="module")
def agent_with_api(tmp_path_factory, fake_api) -> Iterator[AgentServer]:
    server = AgentServer(tmp_path_factory.mktemp("agent_api"), fake_api)
    server.process.start(timeout=60)
    yield server
    server.process.stop()


class WeChatBot(Bot):
    """The real bot with the WeChat channel, talking to the stand-in WeChat API (or, with
    api=None, without an AppSecret: late answers come on WeChat's retries only)."""

    def __init__(self, workdir: Path, api: Optional[FakeWeChatAPI], extra_env: Optional[Dict[str, str]] = None):
        # Slow answers are made by holding the registry's database: the action server waits for it
        # (DB_TIMEOUT_SECONDS) and Rasa waits for the action server (ACTION_TIMEOUT_SECONDS).
        env = {**SETTINGS, "DB_TIMEOUT_SECONDS": "30", "ACTION_TIMEOUT_SECONDS": "30", **(extra_env or {})}
        if api is None:
            env["WECHAT_APPSECRET"] = ""
        else:
            env["WECHAT_API_BASE"] = api.base_url
        super().__init__(workdir, extra_env=env, credentials=ROOT / "credentials.wechat.yml")
        self.api = api
        self.url = f"http://127.0.0.1:{self.rasa_port}/webhooks/wechat/webhook"

    def sim(self, mode: str = "safe") -> WeChatSimulator:
        return simulator(self.url, mode)


def started_bot(workdir: Path, api: Optional[FakeWeChatAPI], extra_env: Optional[Dict[str, str]] = None) -> WeChatBot:
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train`")
    return WeChatBot(workdir, api, extra_env).start()


@pytest.fixture(scope="module")
def wechat_bot(tmp_path_factory, fake_api) -> Iterator[WeChatBot]:
    bot = started_bot(tmp_path_factory.mktemp("wechat_bot"), fake_api)
    yield bot
    bot.stop()


@pytest.fixture(scope="module")
def wechat_bot_without_api(tmp_path_factory) -> Iterator[WeChatBot]:
    bot = started_bot(tmp_path_factory.mktemp("wechat_bot_without_api"), None)
    yield bot
    bot.stop()


# --- what the real-bot tests read ---------------------------------------------------------------

def said_texts(outcome) -> List[str]:
    assert outcome.reply is not None, outcome.attempts
    return split_reply(outcome.reply)[0]


def tracker_events(bot, openid: str, type_name: str) -> List[str]:
    with sqlite3.connect(bot.workdir / "tracker.db") as conn:
        rows = conn.execute("SELECT data FROM events WHERE sender_id = ? AND type_name = ? ORDER BY id",
                            ("wechat:" + openid, type_name)).fetchall()
    return [row[0] for row in rows]


def user_texts(bot, openid: str) -> List[str]:
    """What reached the bot from this WeChat user, turn by turn."""
    return [json.loads(data)["text"] for data in tracker_events(bot, openid, "user")]


@contextmanager
def terminal_db_locked(bot, seconds: float) -> Iterator[None]:
    """Another connection holds the terminal database's write lock for `seconds`, as a long batch
    job would; the action server's query waits for it (DB_TIMEOUT_SECONDS is 30 here)."""
    conn = sqlite3.connect(bot.terminal_db, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    timer = threading.Timer(seconds, lambda: conn.execute("COMMIT"))
    timer.start()
    try:
        yield
    finally:
        timer.join()
        conn.close()


def wait_for_messages(api, openid: str, timeout: float = 15) -> List[str]:
    deadline = time.monotonic() + timeout
    while not api.messages_to(openid) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    return api.messages_to(openid)


def to_phone_prompt(sim, openid):
    """A terminal lookup up to the question for the phone tail, whose answer needs the terminal
    database (slowed down with terminal_db_locked)."""
    sim.deliver(sim.text(openid, "帮我查一下终端状态"))
    assert_said(said_texts(sim.deliver(sim.text(openid, "30091254"))), "utter_ask_phone_tail")
