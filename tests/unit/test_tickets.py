"""Callback tickets (actions/tickets.py) against SQLite and the local PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from actions import tickets as tk
from actions.config import get_settings
from actions.registry import Registry, RegistryUnavailable, callback_tickets
from actions.tickets import (
    Ticket,
    TicketClosed,
    TicketNotFound,
    TicketStore,
    find_mobile,
    mask_phone,
    normalize_mobile,
)
from tests.postgres import postgres_schema
from tests.support.threads import run_in_threads

TIMEOUT = 2.0
T0 = dt.datetime(2026, 9, 30, 6, 30, tzinfo=dt.timezone.utc)  # 14:30 in Beijing
PHONE = "13812345678"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'terminals.db'}"
        return
    with postgres_schema(request.getfixturevalue("postgres_base_url"), "test_tickets") as (_, url):
        yield url


@pytest.fixture()
def make_store(db_url: str) -> Iterator[Callable[..., TicketStore]]:
    registries: list[Registry] = []

    def factory(url: str | None = None, **kwargs: object) -> TicketStore:
        registry = Registry(url or db_url, TIMEOUT, auto_seed=False)
        registries.append(registry)
        return TicketStore(registry, **kwargs)  # type: ignore[arg-type]

    yield factory
    for registry in registries:
        registry.close()


@pytest.fixture()
def store(make_store: Callable[..., TicketStore]) -> TicketStore:
    return make_store(phone_retention_days=30)


def open_one(store: TicketStore, conversation: str = "conv-1", **kwargs: object) -> tuple[Ticket, bool]:
    values: dict[str, object] = {
        "channel": "socketio", "topic": "押金什么时候退", "phone": PHONE, "terminal_id": "30091254", "now": T0,
    }
    values.update(kwargs)
    return store.open_ticket(conversation, **values)  # type: ignore[arg-type]


def rows(store: TicketStore, conversation: str | None = None) -> list[sa.Row]:
    query = sa.select(callback_tickets)
    if conversation is not None:
        query = query.where(callback_tickets.c.conversation == conversation)
    with store.registry.engine.connect() as conn:
        return list(conn.execute(query))




# --- opening ---------------------------------------------------------------------------------------


def test_a_ticket_is_opened_with_the_phone_kept_apart_and_masked(store: TicketStore) -> None:
    ticket, created = open_one(store)
    assert created
    assert ticket.ticket_id.startswith("HJ20260930") and len(ticket.ticket_id) == 16
    assert ticket.ticket_id[2:].isalnum() and ticket.ticket_id == ticket.ticket_id.upper()
    assert (ticket.conversation, ticket.channel, ticket.topic) == ("conv-1", "socketio", "押金什么时候退")
    assert (ticket.phone_masked, ticket.terminal_id, ticket.status) == ("138****5678", "30091254", "open")
    assert ticket.created_at == T0 and ticket.created_at.tzinfo is not None
    assert ticket.closed_at is None and ticket.notified_at is None and ticket.notify_attempts == 0
    assert PHONE not in repr(ticket)  # the dataclass has no phone: logging a ticket cannot leak it
    assert store.phone_of(ticket.ticket_id) == PHONE
    assert store.get(ticket.ticket_id.lower()) == ticket
    assert store.open_for("conv-1") == ticket


def test_the_ticket_number_carries_the_beijing_date(store: TicketStore) -> None:
    late_evening_utc = dt.datetime(2026, 9, 30, 17, 0, tzinfo=dt.timezone.utc)  # 01:00 on 1 October in Beijing
    ticket, _ = open_one(store, now=late_evening_utc)
    assert ticket.ticket_id.startswith("HJ20261001")


def test_opening_again_returns_the_open_ticket_unchanged(store: TicketStore) -> None:
    first, _ = open_one(store)
    again, created = open_one(store, topic="另一个问题", phone="13900001111", terminal_id=None)
    assert not created and again == first
    assert store.phone_of(first.ticket_id) == PHONE
    assert len(rows(store, "conv-1")) == 1


def test_each_conversation_has_its_own_ticket(store: TicketStore) -> None:
    first, _ = open_one(store, "conv-1")
    second, created = open_one(store, "conv-2", now=T0 - dt.timedelta(minutes=1))
    assert created and second.ticket_id != first.ticket_id
    assert [t.ticket_id for t in store.list_open()] == [second.ticket_id, first.ticket_id]  # oldest first


def test_concurrent_requests_from_several_servers_open_one_ticket(make_store: Callable[..., TicketStore]) -> None:
    stores = [make_store() for _ in range(6)]
    for each in stores:
        assert each.open_for("conv-race") is None  # schema ready before the race
    results = run_in_threads(6, lambda i: open_one(stores[i], "conv-race", phone=f"1390000000{i}"))
    assert all(isinstance(result, tuple) for result in results), results
    assert sorted(created for _, created in results) == [False] * 5 + [True]  # type: ignore[misc]
    assert len({ticket.ticket_id for ticket, _ in results}) == 1  # type: ignore[misc]
    assert len(rows(stores[0], "conv-race")) == 1


def test_the_database_allows_one_open_ticket_per_conversation(store: TicketStore) -> None:
    def row(ticket_id: str, status: str) -> dict[str, object]:
        return {"ticket_id": ticket_id, "conversation": "conv-x", "channel": "rest", "topic": "t",
                "phone": PHONE, "phone_masked": "138****5678", "status": status,
                "created_at": T0.replace(tzinfo=None), "notify_attempts": 0}

    engine = store.registry.engine
    with engine.begin() as conn:
        conn.execute(callback_tickets.insert(), [row("HJ20260930AAAAAA", "open"), row("HJ20260930BBBBBB", "closed")])
    with pytest.raises(sa_exc.IntegrityError), engine.begin() as conn:
        conn.execute(callback_tickets.insert(), [row("HJ20260930CCCCCC", "open")])
    with pytest.raises(sa_exc.IntegrityError), engine.begin() as conn:
        conn.execute(callback_tickets.insert(), [row("HJ20260930DDDDDD", "pending")])  # the check constraint
    assert len(rows(store, "conv-x")) == 2


def test_after_closing_the_conversation_can_open_a_new_ticket(store: TicketStore) -> None:
    first, _ = open_one(store)
    store.close(first.ticket_id, "已回电", now=T0 + dt.timedelta(hours=1))
    assert store.open_for("conv-1") is None
    second, created = open_one(store, topic="又有问题", now=T0 + dt.timedelta(hours=2))
    assert created and second.ticket_id != first.ticket_id
    assert store.open_for("conv-1") == second
    assert [t.ticket_id for t in store.list_open()] == [second.ticket_id]
    assert store.get(first.ticket_id).status == "closed"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"phone": "1381234567"}, "mobile"),
        ({"phone": "010-12345678"}, "mobile"),
        ({"terminal_id": "3009"}, "terminal"),
        ({"topic": " \n\t "}, "topic"),
        ({"channel": ""}, "channel"),
    ],
)
def test_invalid_details_open_nothing(store: TicketStore, change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_one(store, **change)
    assert rows(store) == []


def test_the_topic_is_stored_on_one_line_with_long_numbers_masked_and_cut(store: TicketStore) -> None:
    topic = "终端30091254刷卡失败\x1b[2J\n电话 138-1234-5678 卡号6222021234567890123 押金299元\u202e" + "很" * 300
    ticket, _ = open_one(store, topic=topic)
    assert ticket.topic.startswith("终端30091254刷卡失败 [2J 电话 **** 卡号**** 押金299元 很")
    assert "\x1b" not in ticket.topic and "\n" not in ticket.topic and "\u202e" not in ticket.topic
    assert len(ticket.topic) == tk.TOPIC_MAX_CHARS


# --- closing ---------------------------------------------------------------------------------------


def test_closing_keeps_the_note_and_the_time(store: TicketStore) -> None:
    ticket, _ = open_one(store)
    closed_at = T0 + dt.timedelta(hours=3)
    closed = store.close(ticket.ticket_id, "  已回电，押金已退\n客户满意  ", now=closed_at)
    assert (closed.status, closed.closed_at, closed.close_note) == ("closed", closed_at, "已回电，押金已退\n客户满意")
    assert store.get(ticket.ticket_id) == closed
    assert store.phone_of(ticket.ticket_id) == PHONE  # kept for the retention period


def test_closing_twice_or_an_unknown_ticket_is_a_clear_error(store: TicketStore) -> None:
    ticket, _ = open_one(store)
    store.close(ticket.ticket_id, "已回电", now=T0)
    with pytest.raises(TicketClosed) as raised:
        store.close(ticket.ticket_id, "再关一次")
    assert raised.value.closed_at == T0
    assert store.get(ticket.ticket_id).close_note == "已回电"  # type: ignore[union-attr]
    for unknown in ("HJ20260930ZZZZZZ", "nope", "'; DROP TABLE callback_tickets; --", ""):
        with pytest.raises(TicketNotFound):
            store.close(unknown, "note")
    assert len(rows(store)) == 1


def test_a_note_is_required_to_close(store: TicketStore) -> None:
    ticket, _ = open_one(store)
    for note in ("", "   ", "\n\x00\n"):
        with pytest.raises(ValueError, match="note"):
            store.close(ticket.ticket_id, note)
    assert store.get(ticket.ticket_id).is_open  # type: ignore[union-attr]


# --- deleting phone numbers ------------------------------------------------------------------------


def test_phones_are_deleted_after_the_retention_period_not_before(store: TicketStore) -> None:
    closed, _ = open_one(store, "conv-closed")
    store.close(closed.ticket_id, "已回电", now=T0)
    still_open, _ = open_one(store, "conv-open", now=T0 - dt.timedelta(days=90))
    assert store.purge_phones(now=T0 + dt.timedelta(days=30) - dt.timedelta(seconds=1)) == 0
    assert store.phone_of(closed.ticket_id) == PHONE
    assert store.purge_phones(now=T0 + dt.timedelta(days=30)) == 1
    assert store.phone_of(closed.ticket_id) is None
    assert store.get(closed.ticket_id).phone_masked == "138****5678"  # type: ignore[union-attr]
    assert store.phone_of(still_open.ticket_id) == PHONE  # an open ticket is still to be called
    assert store.purge_phones(now=T0 + dt.timedelta(days=400)) == 0


def test_the_retention_period_is_a_setting(make_store: Callable[..., TicketStore],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TICKET_PHONE_RETENTION_DAYS", raising=False)
    assert get_settings().ticket_phone_retention_days == 30
    monkeypatch.setenv("TICKET_PHONE_RETENTION_DAYS", "0")
    store = make_store()
    ticket, _ = open_one(store)
    store.close(ticket.ticket_id, "已回电", now=T0)
    assert store.purge_phones(now=T0) == 1
    monkeypatch.setenv("TICKET_PHONE_RETENTION_DAYS", "-3")  # invalid: the default
    assert get_settings().ticket_phone_retention_days == 30


# --- the notification outbox -----------------------------------------------------------------------


def test_a_new_ticket_is_due_and_a_claim_leases_it(store: TicketStore) -> None:
    ticket, _ = open_one(store)
    (claimed,) = store.claim_due(now=T0, lease_seconds=30)
    assert claimed.ticket_id == ticket.ticket_id
    assert store.claim_due(now=T0 + dt.timedelta(seconds=29)) == []  # leased
    (again,) = store.claim_due(now=T0 + dt.timedelta(seconds=30))  # the claimant died: lease over
    assert again.ticket_id == ticket.ticket_id


def test_failed_posts_back_off_exponentially_up_to_ten_minutes(store: TicketStore) -> None:
    ticket, _ = open_one(store)
    now = T0
    waits = []
    for _ in range(10):
        (claimed,) = store.claim_due(now=now)
        next_at = store.mark_failed(claimed.ticket_id, now=now)
        assert next_at is not None
        assert store.claim_due(now=next_at - dt.timedelta(seconds=1)) == []
        waits.append((next_at - now).total_seconds())
        now = next_at
    assert waits == [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]
    assert store.get(ticket.ticket_id).notify_attempts == 10  # type: ignore[union-attr]
    assert tk.backoff(10_000) == dt.timedelta(minutes=10)  # a long outage does not overflow


def test_a_notified_or_closed_ticket_is_never_claimed_again(store: TicketStore) -> None:
    notified, _ = open_one(store, "conv-1")
    closed, _ = open_one(store, "conv-2")
    store.claim_due(now=T0)
    store.mark_notified(notified.ticket_id, now=T0 + dt.timedelta(seconds=1))
    store.close(closed.ticket_id, "客户已自行解决", now=T0)
    assert store.claim_due(now=T0 + dt.timedelta(days=1)) == []
    ticket = store.get(notified.ticket_id)
    assert ticket.notified_at == T0 + dt.timedelta(seconds=1) and ticket.notify_attempts == 1  # type: ignore[union-attr]
    assert store.mark_failed(notified.ticket_id, now=T0) is None  # a late failure changes nothing
    assert store.get(notified.ticket_id).notified_at is not None  # type: ignore[union-attr]


def test_servers_claiming_at_once_each_get_different_tickets(make_store: Callable[..., TicketStore]) -> None:
    stores = [make_store() for _ in range(4)]
    opened = {open_one(stores[0], f"conv-{i}")[0].ticket_id for i in range(8)}
    results = run_in_threads(4, lambda i: [t.ticket_id for t in stores[i].claim_due(now=T0, limit=8)])
    assert all(isinstance(result, list) for result in results), results
    claimed = [ticket_id for result in results for ticket_id in result]  # type: ignore[union-attr]
    assert sorted(claimed) == sorted(opened)  # every ticket claimed, none twice


def test_an_unreachable_database_raises_quickly(make_store: Callable[..., TicketStore], db_url: str) -> None:
    unreachable = ("sqlite:////proc/lakala-missing/terminals.db" if db_url.startswith("sqlite")
                   else "postgresql://postgres@127.0.0.1:1/nope")
    store = make_store(unreachable)
    for call in (lambda: open_one(store), store.list_open, lambda: store.claim_due(), store.purge_phones):
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable):
            call()
        assert time.monotonic() - started < TIMEOUT + 1


# --- phone numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("13812345678", PHONE),
        (" 138 1234 5678 ", PHONE),
        ("138-1234-5678", PHONE),
        ("138－1234－5678", PHONE),  # full-width dashes
        ("１３８１２３４５６７８", PHONE),
        ("１３８　１２３４　５６７８", PHONE),
        ("+86 138 1234 5678", PHONE),
        ("＋８６１３８１２３４５６７８", PHONE),
        ("8613812345678", PHONE),
        ("0086-13812345678", PHONE),
        ("19912345678", "19912345678"),
        ("1381234567", None),  # 10 digits
        ("138123456789", None),  # 12 digits
        ("12812345678", None),  # no mobile starts 12
        ("23812345678", None),
        ("010-12345678", None),  # a landline
        ("8612812345678", None),
        ("86 86 13812345678", None),
        ("+8713812345678", None),
        ("1381234567O", None),  # a letter O
        ("138l2345678", None),  # a letter l
        ("١٣٨١٢٣٤٥٦٧٨", None),  # Arabic-Indic digits
        ("①③⑧①②③④⑤⑥⑦⑧", None),
        ("138\u200b12345678", None),  # a zero-width space
        ("138\n12345678", None),
        ("我的手机13812345678", None),  # a sentence: find_mobile
        ("13812345678 13912345678", None),
        ("13812345678; DROP TABLE callback_tickets", None),
        ("1" * 10_000, None),
        ("", None),
        (None, None),
        (13812345678, None),
        (b"13812345678", None),
    ],
)
def test_normalize_mobile(typed: object, expected: str | None) -> None:
    assert normalize_mobile(typed) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("我的电话是 138 1234 5678，谢谢", PHONE),
        ("手机：+86-13812345678", PHONE),
        ("13812345678 就是 138-1234-5678", PHONE),  # the same number twice
        ("13812345678 或者 13912345678", None),  # which one?
        ("卡号 6222 1381 2345 6780", None),  # inside a longer number
        ("尾号5678", None),
        (None, None),
    ],
)
def test_find_mobile(text: str | None, expected: str | None) -> None:
    assert find_mobile(text) == expected


@pytest.mark.parametrize(
    ("phone", "masked"),
    [(PHONE, "138****5678"), ("+86 139-0000-1111", "139****1111"), ("12345", "****"), (None, "****")],
)
def test_mask_phone(phone: str | None, masked: str) -> None:
    assert mask_phone(phone) == masked
