"""The support team's tickets CLI (python -m actions.tickets_cli), run as `make tickets` runs it:
a subprocess with the databases in the environment. The transcript comes from a tracker store
written by Rasa's own SQLTrackerStore, which keeps what merchants typed unmasked."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from rasa.core.tracker_store import SQLTrackerStore
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ActionExecuted, BotUttered, SlotSet, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker

from actions.registry import Registry
from actions.tickets import Ticket, TicketStore
from actions.tickets_cli import mask_transcript

ROOT = Path(__file__).resolve().parents[2]
PHONE = "13812345678"
OTHER_PHONE = "13900001111"
NOW = dt.datetime.now(dt.timezone.utc)
STARTED = 1_790_000_000.0  # 2026-09-21 22:13:20 in Beijing (14:13:20 UTC)


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("WECOM_WEBHOOK_URL", "TICKET_PHONE_RETENTION_DAYS")}
    environ.update(TERMINAL_DB_URL=f"sqlite:///{tmp_path / 'terminals.db'}",
                   TRACKER_DB_URL=f"sqlite:///{tmp_path / 'tracker.db'}")
    return environ


@pytest.fixture()
def store(env: dict[str, str]) -> Iterator[TicketStore]:
    registry = Registry(env["TERMINAL_DB_URL"], 2.0, auto_seed=False)
    yield TicketStore(registry, phone_retention_days=30)
    registry.close()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actions.tickets_cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def open_one(store: TicketStore, conversation: str, **kwargs: object) -> Ticket:
    values: dict[str, object] = {"channel": "socketio", "topic": "押金什么时候退", "phone": PHONE,
                                 "terminal_id": "30091254", "now": NOW}
    values.update(kwargs)
    return store.open_ticket(conversation, **values)[0]  # type: ignore[arg-type]


def write_conversations(tracker_db: Path) -> None:
    """Two conversations in Rasa's events table, as its SQL tracker store writes them."""
    tracker_store = SQLTrackerStore(Domain.empty(), dialect="sqlite", db=str(tracker_db))
    conversations = {
        "conv-1": [
            ActionExecuted("action_listen", timestamp=STARTED),
            UserUttered(f"我要注销终端30091254，手机{OTHER_PHONE}", timestamp=STARTED + 1),
            BotUttered("请告诉我登记手机的后四位。", timestamp=STARTED + 2),
            UserUttered("尾号 6721", timestamp=STARTED + 3),
            SlotSet("phone_tail", "6721", timestamp=STARTED + 3),
            BotUttered("终端 K7306118 已沉睡。需要人工吗？", data={"buttons": [
                {"title": "转人工", "payload": "/handoff"}, {"title": "先不用", "payload": "/deny"}]},
                timestamp=STARTED + 4),
            UserUttered(f"请回电 {PHONE}\x1b[2J\x1b]0;owned\x07", timestamp=STARTED + 5),
        ],
        "conv-2": [UserUttered("另一位商户的话 13700002222", timestamp=STARTED + 6)],
    }
    for sender, events in conversations.items():
        asyncio.run(tracker_store.save(DialogueStateTracker.from_events(sender, events)))
    tracker_store.engine.dispose()


def test_list_shows_open_tickets_with_masked_phones(env: dict[str, str], store: TicketStore) -> None:
    empty = cli(env)
    assert empty.returncode == 0 and "没有未关闭的回电工单" in empty.stdout
    web = open_one(store, "conv-1")
    wechat = open_one(store, "conv-2", channel="wechat", phone=OTHER_PHONE, terminal_id=None,
                      topic="机器坏了\x1b[31m红字", now=NOW + dt.timedelta(minutes=1))
    store.close(open_one(store, "conv-3", phone="13700002222").ticket_id, "已回电")
    result = cli(env, "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "2 张" in lines[0]
    assert lines[1].split() == ["单号", "创建时间", "渠道", "手机", "终端", "已通知", "问题"]
    assert web.ticket_id in lines[2] and "网页" in lines[2] and "138****5678" in lines[2] and "30091254" in lines[2]
    assert wechat.ticket_id in lines[3] and "微信公众号" in lines[3] and "139****1111" in lines[3]
    assert lines[2].split()[6] == "否"  # the time is two words
    assert "13700002222" not in result.stdout and "137****2222" not in result.stdout  # closed: not listed
    for secret in (PHONE, OTHER_PHONE, "\x1b"):
        assert secret not in result.stdout


def test_show_gives_the_full_phone_and_a_masked_transcript(
    env: dict[str, str], store: TicketStore, tmp_path: Path
) -> None:
    write_conversations(tmp_path / "tracker.db")
    ticket = open_one(store, "conv-1")
    result = cli(env, "show", ticket.ticket_id.lower())
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"回电工单 {ticket.ticket_id}（未关闭）" in out
    assert f"手机：{PHONE}（请回电）" in out
    assert out.count(PHONE) == 1  # in the transcript too, but masked there
    assert "问题：押金什么时候退" in out and "终端：30091254" in out and "渠道：网页" in out
    transcript = out[out.index("对话记录"):].splitlines()
    assert len(transcript) == 6
    assert transcript[1].endswith("客户：我要注销终端30091254，手机****")
    assert transcript[1].startswith("  09-21 22:13:21 客户：")  # Beijing time
    assert transcript[2].endswith("机器人：请告诉我登记手机的后四位。")
    assert transcript[3].endswith("客户：尾号 ****")
    assert transcript[4].endswith("机器人：终端 K7306118 已沉睡。需要人工吗？ [按钮：转人工 | 先不用]")
    assert "客户：请回电 ****" in transcript[5]
    for leaked in (OTHER_PHONE, "6721", "\x1b", "\x07", "另一位商户", "13700002222"):
        assert leaked not in out, leaked


def test_show_without_a_tracker_store_still_shows_the_ticket(env: dict[str, str], store: TicketStore) -> None:
    ticket = open_one(store, "conv-1")
    result = cli(env, "show", ticket.ticket_id)
    assert result.returncode == 0, result.stderr
    assert f"手机：{PHONE}" in result.stdout and "对话记录：不可用" in result.stdout


@pytest.mark.parametrize("ticket_id", ["HJ20260930ZZZZZZ", "nope", "'; DROP TABLE callback_tickets; --"])
def test_an_unknown_ticket_is_an_error(env: dict[str, str], store: TicketStore, ticket_id: str) -> None:
    open_one(store, "conv-1")
    for args in (["show", ticket_id], ["close", ticket_id, "--note", "x"]):
        result = cli(env, *args)
        assert result.returncode == 1 and "没有这张工单" in result.stderr
    assert len(store.list_open()) == 1


def test_close_needs_a_note_and_closes_once(env: dict[str, str], store: TicketStore) -> None:
    ticket = open_one(store, "conv-1")
    for args in ([], ["--note", "   "]):
        result = cli(env, "close", ticket.ticket_id, *args)
        assert result.returncode == 1 and "备注" in result.stderr
    assert store.get(ticket.ticket_id).is_open  # type: ignore[union-attr]
    closed = cli(env, "close", ticket.ticket_id, "--note", "已回电，押金已退")
    assert closed.returncode == 0 and "已关闭" in closed.stdout
    assert store.get(ticket.ticket_id).close_note == "已回电，押金已退"  # type: ignore[union-attr]
    again = cli(env, "close", ticket.ticket_id, "--note", "再关一次")
    assert again.returncode == 1 and "已于" in again.stderr
    shown = cli(env, "show", ticket.ticket_id)
    assert "（已关闭）" in shown.stdout and "关闭备注：已回电，押金已退" in shown.stdout
    assert "没有未关闭的回电工单" in cli(env, "list").stdout


def test_purge_deletes_phones_after_the_retention_period(env: dict[str, str], store: TicketStore) -> None:
    old = open_one(store, "conv-old")
    store.close(old.ticket_id, "已回电", now=NOW - dt.timedelta(days=31))
    recent = open_one(store, "conv-recent")
    store.close(recent.ticket_id, "已回电", now=NOW - dt.timedelta(days=29))
    result = cli(env, "purge")
    assert result.returncode == 0 and "已删除 1 张" in result.stdout
    assert store.phone_of(old.ticket_id) is None and store.phone_of(recent.ticket_id) == PHONE
    shown = cli(env, "show", old.ticket_id)
    assert "138****5678（完整号码已按保留期删除）" in shown.stdout and PHONE not in shown.stdout
    # Every call purges: with a shorter retention, `list` alone deletes the recent one too.
    assert cli(dict(env, TICKET_PHONE_RETENTION_DAYS="7"), "list").returncode == 0
    assert store.phone_of(recent.ticket_id) is None


def test_an_unreachable_database_is_reported(env: dict[str, str]) -> None:
    result = cli(dict(env, TERMINAL_DB_URL="sqlite:////proc/lakala-missing/terminals.db"), "list")
    assert result.returncode == 2 and "工单库不可用" in result.stderr


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("手机13812345678", "手机****"),
        ("+86 138-1234-5678", "+****"),
        ("尾号６７２１", "尾号****"),
        ("尾号 67 21", "尾号 ****"),
        ("1234567", "****"),
        ("卡号6222021234567890123", "卡号****"),
        ("终端30091254", "终端30091254"),
        ("终端 3009 1254", "终端 3009 1254"),
        ("K7306118 的押金299元", "K7306118 的押金299元"),
        ("ａ００１２３４５", "ａ００１２３４５"),  # a full-width terminal number
    ],
)
def test_transcripts_mask_phones_and_tails_not_terminals(text: str, masked: str) -> None:
    assert mask_transcript(text) == masked
