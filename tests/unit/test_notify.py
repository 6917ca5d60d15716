"""Notifying the support group of callback tickets (actions/notify.py), against a local fake of
the WeCom group robot (tests/support/wecom.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

from actions import notify
from actions import tickets as tk
from actions.config import get_settings
from actions.notify import NotificationLoop, WeComNotifier, markdown
from actions.registry import Registry
from actions.tickets import Ticket, TicketStore
from tests.postgres import postgres_schema
from tests.support.wecom import FakeWeCom

PHONE = "13812345678"
T0 = dt.datetime(2026, 9, 30, 6, 30, tzinfo=dt.timezone.utc)  # 14:30 in Beijing


@pytest.fixture()
def robot() -> Iterator[FakeWeCom]:
    with FakeWeCom() as fake:
        yield fake


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'terminals.db'}"
        return
    with postgres_schema(request.getfixturevalue("postgres_base_url"), "test_notify") as (_, url):
        yield url


@pytest.fixture()
def make_store(db_url: str) -> Iterator[Callable[[], TicketStore]]:
    registries: list[Registry] = []

    def factory() -> TicketStore:
        registries.append(Registry(db_url, 2.0, auto_seed=False))
        return TicketStore(registries[-1], phone_retention_days=30)

    yield factory
    for registry in registries:
        registry.close()


@pytest.fixture()
def store(make_store: Callable[[], TicketStore]) -> TicketStore:
    return make_store()


def open_one(store: TicketStore, conversation: str = "conv-secret-1", **kwargs: object) -> Ticket:
    values: dict[str, object] = {"channel": "socketio", "topic": "押金什么时候退", "phone": PHONE,
                                 "terminal_id": "30091254", "now": T0}
    values.update(kwargs)
    ticket, created = store.open_ticket(conversation, **values)  # type: ignore[arg-type]
    assert created
    return ticket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


# --- the message -----------------------------------------------------------------------------------


def test_the_post_is_the_robots_protocol_with_the_phone_masked(store: TicketStore, robot: FakeWeCom) -> None:
    ticket = open_one(store)
    delivered = asyncio.run(WeComNotifier(robot.url).deliver_due(store, now=T0))
    assert delivered == 1
    (request,) = robot.requests()
    assert (request.method, request.path, request.query) == ("POST", "/cgi-bin/webhook/send", {"key": [robot.key]})
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.answer == {"errcode": 0, "errmsg": "ok"}
    body = request.json
    assert set(body) == {"msgtype", "markdown"} and body["msgtype"] == "markdown"
    assert set(body["markdown"]) == {"content"}
    content = body["markdown"]["content"]
    for expected in (ticket.ticket_id, "押金什么时候退", "网页", "138****5678", "30091254",
                     "2026-09-30 14:30", "新回电工单", "单号", "渠道", "问题", "手机", "终端", "时间"):
        assert expected in content, expected
    raw = request.body.decode("utf-8")
    assert PHONE not in raw and "1381234" not in raw and "12345678" not in raw
    assert "conv-secret-1" not in raw  # the conversation id stays inside
    assert store.get(ticket.ticket_id).notified_at == T0  # type: ignore[union-attr]


@pytest.mark.parametrize(("channel", "name"), [("socketio", "网页"), ("rest", "接口"), ("wechat", "微信公众号")])
def test_channels_are_named_for_the_team(store: TicketStore, channel: str, name: str) -> None:
    ticket = open_one(store, channel=channel, terminal_id=None)
    content = markdown(ticket)
    assert f"> 渠道：{name}" in content
    assert "终端" not in content  # no terminal, no line


def test_merchants_text_cannot_mention_anyone_or_add_markup(store: TicketStore) -> None:
    ticket = open_one(store, topic="<@all> **急** [点我](http://evil.example) <font color=\"warning\">x</font>\n# 标题")
    content = markdown(ticket)
    topic_line = content.splitlines()[-1]
    assert topic_line.startswith("> 问题：") and len(content.splitlines()) == 7  # the topic is one line
    for markup in ("<@", "**", "[点我]", "<font", "\n#"):
        assert markup not in topic_line, markup


def test_a_long_message_is_cut_to_4096_bytes_keeping_the_essentials(store: TicketStore, robot: FakeWeCom) -> None:
    ticket = dataclasses.replace(open_one(store), topic="很" * 3000 + "END")  # 9,000 bytes, by hand
    content = markdown(ticket)
    assert len(content.encode("utf-8")) <= 4096
    assert content.endswith("很…") and "END" not in content
    assert ticket.ticket_id in content and "138****5678" in content
    notifier = WeComNotifier(robot.url)
    assert asyncio.run(notifier.post(content)) is True
    assert asyncio.run(notifier.post("长" * 5000)) is True  # post cuts whatever it is given, too
    assert [len(c.encode("utf-8")) <= 4096 for c in robot.contents()] == [True, True]
    # The fake refuses what the robot refuses: the cut is what got these through.
    body = json.dumps({"msgtype": "markdown", "markdown": {"content": "长" * 1400}}).encode()
    answer = urllib.request.urlopen(urllib.request.Request(
        robot.url, data=body, headers={"Content-Type": "application/json"}), timeout=5).read()
    assert json.loads(answer)["errcode"] == 40058


# --- failures and retries --------------------------------------------------------------------------


def test_failed_posts_are_retried_with_back_off_and_delivered_once(store: TicketStore, robot: FakeWeCom) -> None:
    ticket = open_one(store)
    notifier = WeComNotifier(robot.url)
    robot.fail_next(status=500)
    robot.fail_next(errcode=45009)  # over the robot's 20 messages a minute

    def round_at(seconds: float) -> int:
        return asyncio.run(notifier.deliver_due(store, now=T0 + dt.timedelta(seconds=seconds)))

    assert round_at(0) == 0  # HTTP 500
    assert round_at(4) == 0 and len(robot.requests()) == 1  # backing off 5 s: not tried
    assert round_at(5) == 0  # errcode 45009
    assert round_at(14) == 0 and len(robot.requests()) == 2  # backing off 10 s
    assert round_at(15) == 1
    assert round_at(600) == 0  # delivered: never again
    assert len(robot.requests()) == 3 and len(robot.contents()) == 1
    notified = store.get(ticket.ticket_id)
    assert notified.notify_attempts == 3 and notified.notified_at == T0 + dt.timedelta(seconds=15)  # type: ignore[union-attr]


def test_a_hung_robot_costs_a_timeout_not_the_ticket(store: TicketStore, robot: FakeWeCom) -> None:
    ticket = open_one(store)
    robot.fail_next(hang=10)
    notifier = WeComNotifier(robot.url, timeout_seconds=0.5)
    started = time.monotonic()
    assert asyncio.run(notifier.deliver_due(store, now=T0)) == 0
    assert time.monotonic() - started < 3
    assert store.get(ticket.ticket_id).notify_attempts == 1  # type: ignore[union-attr]
    assert asyncio.run(notifier.deliver_due(store, now=T0 + dt.timedelta(seconds=5))) == 1
    assert robot.contents() and ticket.ticket_id in robot.contents()[0]


def test_a_round_stops_at_the_first_failure(store: TicketStore, robot: FakeWeCom) -> None:
    for index in range(4):
        open_one(store, f"conv-{index}", now=T0 + dt.timedelta(milliseconds=index))
    robot.rate_limit_per_minute = 2
    notifier = WeComNotifier(robot.url)
    assert asyncio.run(notifier.deliver_due(store, now=T0 + dt.timedelta(seconds=1))) == 2
    assert len(robot.requests()) == 3  # the third got 45009; the fourth waits for the next round
    assert robot.requests()[-1].answer == {"errcode": 45009, "errmsg": "api freq out of limit"}
    robot.rate_limit_per_minute = None  # a minute later
    assert asyncio.run(notifier.deliver_due(store, now=T0 + dt.timedelta(seconds=2))) == 1  # the fourth
    assert asyncio.run(notifier.deliver_due(store, now=T0 + dt.timedelta(seconds=6))) == 1  # the third, backed off
    assert len(robot.contents()) == 4


def test_the_robots_key_is_never_logged(store: TicketStore, robot: FakeWeCom, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    open_one(store)
    robot.echo_key_in_errors = True
    wrong_key = "wrong-key-that-must-not-leak"
    wrong = WeComNotifier(robot.url.replace(robot.key, wrong_key))
    assert asyncio.run(wrong.deliver_due(store, now=T0)) == 0
    assert "refused the message: errcode" in caplog.text  # (its 93000 is masked once log masking is on)
    robot.fail_next(status=502)
    assert asyncio.run(WeComNotifier(robot.url).deliver_due(store, now=T0 + dt.timedelta(seconds=5))) == 0
    unreachable = WeComNotifier(f"http://127.0.0.1:{free_port()}/cgi-bin/webhook/send?key={wrong_key}")
    assert asyncio.run(unreachable.deliver_due(store, now=T0 + dt.timedelta(seconds=20))) == 0
    assert "502" in caplog.text and "ClientConnectorError" in caplog.text
    assert wrong_key not in caplog.text and robot.key not in caplog.text and "webhook/send" not in caplog.text
    assert PHONE not in caplog.text


# --- the loop --------------------------------------------------------------------------------------


def test_the_robot_down_for_a_while_delays_the_post_but_keeps_the_ticket(
    store: TicketStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tk, "BACKOFF_FIRST_SECONDS", 0.1)
    monkeypatch.setattr(tk, "BACKOFF_MAX_SECONDS", 0.4)
    port = free_port()
    robot = FakeWeCom(port=port)  # not started: connections are refused
    ticket = open_one(store, now=None)

    async def scenario() -> None:
        loop = NotificationLoop(store, WeComNotifier(robot.url, timeout_seconds=1), poll_seconds=0.05)
        loop.start()
        try:
            await asyncio.sleep(1.0)
            down = store.get(ticket.ticket_id)
            assert down is not None and down.notified_at is None and down.notify_attempts >= 2  # retried
            robot.start()
            for _ in range(100):
                if robot.contents():
                    break
                await asyncio.sleep(0.05)
        finally:
            await loop.stop()

    try:
        asyncio.run(scenario())
        assert len(robot.contents()) == 1 and ticket.ticket_id in robot.contents()[0]
        assert store.get(ticket.ticket_id).notified_at is not None  # type: ignore[union-attr]
    finally:
        robot.stop()


def test_a_kick_posts_a_new_ticket_at_once(store: TicketStore, robot: FakeWeCom) -> None:
    async def scenario() -> float:
        loop = NotificationLoop(store, WeComNotifier(robot.url), poll_seconds=60)
        loop.start()
        try:
            await asyncio.sleep(0.2)  # the first round found nothing; the next is a minute away
            await asyncio.to_thread(open_one, store, "conv-kicked", now=None)
            started = time.monotonic()
            notify.kick()
            while not robot.contents() and time.monotonic() - started < 5:
                await asyncio.sleep(0.01)
            return time.monotonic() - started
        finally:
            await loop.stop()

    assert asyncio.run(scenario()) < 2
    assert len(robot.contents()) == 1
    notify.kick()  # no loop running: nothing happens


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_two_servers_posting_at_once_post_each_ticket_once(
    make_store: Callable[[], TicketStore], robot: FakeWeCom
) -> None:
    first, second = make_store(), make_store()
    opened = {open_one(first, f"conv-{index}", now=None).ticket_id for index in range(6)}
    robot.delay = 0.1  # a slow robot widens the window in which both servers are posting

    async def scenario() -> None:
        loops = [NotificationLoop(store, WeComNotifier(robot.url), poll_seconds=0.05) for store in (first, second)]
        for loop in loops:
            loop.start()
        try:
            for _ in range(200):
                if len(robot.contents()) >= len(opened):
                    break
                for loop in loops:
                    loop.kick()
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a second post, if any, would arrive now
        finally:
            for loop in loops:
                await loop.stop()

    asyncio.run(scenario())
    posted = [next(t for t in opened if t in content) for content in robot.contents()]
    assert sorted(posted) == sorted(opened)  # every ticket, none twice
    assert len(robot.requests()) == len(opened)


def test_without_a_webhook_nothing_is_posted_and_tickets_are_kept(
    store: TicketStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.delenv("WECOM_WEBHOOK_URL", raising=False)
    ticket = open_one(store)
    closed = open_one(store, "conv-old", now=T0 - dt.timedelta(days=60))
    store.close(closed.ticket_id, "已回电", now=T0 - dt.timedelta(days=40))

    async def scenario() -> None:
        loop = NotificationLoop(store, poll_seconds=0.05)
        assert loop.notifier is None
        loop.start()
        await asyncio.sleep(0.3)
        await loop.stop()

    asyncio.run(scenario())
    assert caplog.text.count("WECOM_WEBHOOK_URL is not set") == 1
    assert store.get(ticket.ticket_id).notified_at is None  # type: ignore[union-attr]
    assert store.phone_of(ticket.ticket_id) == PHONE
    assert store.phone_of(closed.ticket_id) is None  # the loop purges expired phones


def test_an_invalid_webhook_url_turns_notifications_off(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("WECOM_WEBHOOK_URL", "qyapi.weixin.qq.com/cgi-bin/webhook/send?key=secret-key-123")
    loop = NotificationLoop(TicketStore(Registry("sqlite://", auto_seed=False)))
    assert loop.notifier is None
    assert "secret-key-123" not in caplog.text
    monkeypatch.setenv("WECOM_WEBHOOK_URL", "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=secret-key-123")
    settings = get_settings()
    assert settings.wecom_webhook_url.endswith("secret-key-123")
    assert "secret-key-123" not in repr(settings)


def test_the_loop_outlives_a_database_outage(caplog: pytest.LogCaptureFixture, robot: FakeWeCom) -> None:
    caplog.set_level(logging.DEBUG)
    broken = TicketStore(Registry("sqlite:////proc/lakala-missing/terminals.db", 1.0, auto_seed=False))

    async def scenario() -> bool:
        loop = NotificationLoop(broken, WeComNotifier(robot.url), poll_seconds=0.02, purge_every_seconds=0)
        loop.start()
        await asyncio.sleep(0.4)
        alive = loop._task is not None and not loop._task.done()
        await loop.stop()
        return alive

    assert asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "actions.notify"]
    assert len(warnings) == 1 and "registry failed" in warnings[0].getMessage()


def test_the_action_server_posts_tickets_while_it_runs(tmp_path: Path, robot: FakeWeCom) -> None:
    db_url = f"sqlite:///{tmp_path / 'terminals.db'}"
    store = TicketStore(Registry(db_url, 2.0, auto_seed=False))
    ticket = open_one(store, now=None)
    port = free_port()
    env = dict(os.environ, TERMINAL_DB_URL=db_url, WECOM_WEBHOOK_URL=robot.url, WECOM_POLL_SECONDS="0.2",
               ACTION_SERVER_TOKEN=secrets.token_urlsafe(24), LOG_LEVEL="INFO")
    log = tmp_path / "actions.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "actions.server", "--port", str(port)],
                                  cwd=Path(__file__).resolve().parents[2], env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: bool(robot.contents()) or server.poll() is not None, timeout=60)
        assert server.poll() is None, log.read_text(errors="replace")
        assert ticket.ticket_id in robot.contents()[0]
        later = open_one(store, "conv-later", now=None)
        wait_until(lambda: len(robot.contents()) == 2, timeout=10)  # polled, not only at start
        assert later.ticket_id in robot.contents()[1]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        store.registry.close()
    text = log.read_text(errors="replace")
    assert robot.key not in text and PHONE not in text
    assert "Traceback" not in text, text
