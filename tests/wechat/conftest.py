"""Servers for the WeChat channel tests: the stand-in WeChat API, the channel in front of a
scripted agent, and the real Rasa + action servers started with credentials.wechat.yml."""
import json
import os
import re
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple
from urllib.parse import quote

import pytest

from lakala_server import fallback
from lakala_server.wechat.channel import WECHAT_PREFIX
from lakala_server.wechat.simulator import FakeWeChatAPI, WeChatSimulator
from tests.support.servers import BIN, MODEL, ROOT, Bot, Process, free_port

# Well-formed, made-up settings: a test never talks to a real account.
SETTINGS = {
    "WECHAT_TOKEN": "lakalaTestToken2024",
    "WECHAT_APPID": "wx5c2f6d7e8a9b0c1d",
    "WECHAT_ENCODING_AES_KEY": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    "WECHAT_APPSECRET": "0123456789abcdef0123456789abcdef",
}
OPTION_LINE = re.compile(r"^回复 (\d+) (.+)$")


@pytest.fixture(autouse=True)
def domain_from_repo(monkeypatch):
    # The channel reads domain.yml relative to the working directory, like `rasa run` from the repo.
    monkeypatch.setattr(fallback, "DOMAIN_FILE", ROOT / "domain.yml")


def simulator(url: str, mode: str = "safe", **overrides: str) -> WeChatSimulator:
    settings = {**SETTINGS, **overrides}
    return WeChatSimulator(url, settings["WECHAT_TOKEN"], settings["WECHAT_APPID"],
                           settings["WECHAT_ENCODING_AES_KEY"], mode=mode)


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
    """The real bot with the WeChat channel, talking to the stand-in WeChat API."""

    def __init__(self, workdir: Path, api: FakeWeChatAPI):
        env = {**SETTINGS, "WECHAT_API_BASE": api.base_url, "DB_TIMEOUT_SECONDS": "30"}
        super().__init__(workdir, extra_env=env, credentials=ROOT / "credentials.wechat.yml")
        self.api = api
        self.url = f"http://127.0.0.1:{self.rasa_port}/webhooks/wechat/webhook"

    def sim(self, mode: str = "safe") -> WeChatSimulator:
        return simulator(self.url, mode)


@pytest.fixture(scope="module")
def wechat_bot(tmp_path_factory, fake_api) -> Iterator[WeChatBot]:
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train`")
    bot = WeChatBot(tmp_path_factory.mktemp("wechat_bot"), fake_api)
    bot.start()
    yield bot
    bot.stop()
