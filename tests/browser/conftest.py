"""The real Rasa and action servers plus the web chat server, and a headless Chromium
driven by Playwright (Debian's /usr/bin/chromium: browsers cannot be downloaded here)."""
import os
import shutil
from pathlib import Path
from typing import Iterator, List

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.support.servers import BIN, MODEL, ROOT, Bot, Process, free_port
from tests.support.wecom import FakeWeCom

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
RESULTS = ROOT / "results" / "browser"


class WebChat:
    """Both bot servers and the page, served on 127.0.0.1 the way `make run` does it."""

    def __init__(self, workdir: Path):
        self.web_port = free_port()
        self.url = f"http://127.0.0.1:{self.web_port}/"
        # An integrator's site embedding the chat, on a port of its own.
        self.shop_port = free_port()
        origins = f"http://127.0.0.1:{self.web_port},http://127.0.0.1:{self.shop_port}"
        # The support team's WeCom group, where callback tickets are posted.
        self.wecom = FakeWeCom().start()
        self.bot = Bot(workdir, extra_env={"WEB_ALLOWED_ORIGINS": origins, "WECOM_WEBHOOK_URL": self.wecom.url,
                                           "WECOM_POLL_SECONDS": "1"})
        self.socket_url = f"http://127.0.0.1:{self.bot.rasa_port}"
        env = dict(self.bot.env, WEB_PORT=str(self.web_port), RASA_SOCKET_URL=self.socket_url)
        self.web = Process("web", [str(BIN / "python"), "scripts/web_server.py"], env, workdir, self.url)

    def start(self) -> "WebChat":
        self.bot.start()
        self.web.start(timeout=20)
        return self

    def stop(self) -> None:
        self.web.stop()
        self.bot.stop()
        self.wecom.stop()


@pytest.fixture(scope="session")
def web_chat(tmp_path_factory) -> Iterator[WebChat]:
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train` (make browser does)")
    if not (ROOT / "web" / "node_modules" / "rasa-webchat").exists():
        pytest.fail("the widget is not installed: run `npm ci` in web/ (make browser does)")
    running = WebChat(tmp_path_factory.mktemp("web_chat")).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: run `make chromium` (installs Debian's chromium and fonts-noto-cjk)")
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture()
def remote_requests() -> List[str]:
    """URLs the page asked for that are not on this machine (the page must work offline)."""
    return []


@pytest.fixture()
def page(browser: Browser, remote_requests: List[str]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 560, "height": 780}, device_scale_factor=2,
                                  locale="zh-CN")
    context.set_default_timeout(30_000)

    def offline(route) -> None:
        host = route.request.url.split("/")[2].split(":")[0] if "://" in route.request.url else ""
        if host in ("127.0.0.1", "localhost", ""):
            route.continue_()
        else:
            remote_requests.append(route.request.url)
            route.abort()

    context.route("**/*", offline)
    page = context.new_page()
    yield page
    context.close()
