"""Terminal registry against SQLite and the local PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from actions import registry as reg
from actions.config import REPO_ROOT, get_settings
from actions.policy import Policy, TerminalState
from actions.registry import (
    AlreadyDeregistered,
    Registry,
    RegistryUnavailable,
    TailCheck,
    TerminalNotFound,
    deregistration_requests,
    hash_phone_tail,
    normalize_terminal_id,
    terminals,
)
from tests.postgres import postgres_schema
from tests.support.threads import run_in_threads

POLICY = Policy(dormant_months=3, auto_deregister_months=6, deregistration_working_days=15)
T = dt.date(2026, 9, 30)
TIMEOUT = 2.0


@dataclass(frozen=True)
class Backend:
    name: str
    url: str
    unreachable_url: str


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend(
            "sqlite",
            f"sqlite:///{tmp_path / 'terminals.db'}",
            "sqlite:////proc/lakala-missing/terminals.db",
        )
        return
    base_url = request.getfixturevalue("postgres_base_url")
    with postgres_schema(base_url, "test_registry") as (_, url):
        yield Backend("postgresql", url, "postgresql://postgres@127.0.0.1:1/nope")


@pytest.fixture()
def make_registry(backend: Backend) -> Iterator[Callable[..., Registry]]:
    created: list[Registry] = []

    def factory(url: str | None = None, *, auto_seed: bool = False) -> Registry:
        registry = Registry(url or backend.url, TIMEOUT, policy=POLICY, auto_seed=auto_seed)
        created.append(registry)
        return registry

    yield factory
    for registry in created:
        registry.close()


@pytest.fixture()
def registry(make_registry: Callable[..., Registry]) -> Registry:
    registry = make_registry()
    assert registry.seed_demo(T) is True
    return registry


def count_requests(registry: Registry, terminal_id: str) -> int:
    query = sa.select(sa.func.count()).where(deregistration_requests.c.terminal_id == terminal_id)
    with registry.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())




# --- seeding and states ---------------------------------------------------------------------------


def test_seeding_writes_the_five_demo_terminals(registry: Registry) -> None:
    with registry.engine.connect() as conn:
        ids = set(conn.execute(sa.select(terminals.c.terminal_id)).scalars())
    assert ids == {"30091254", "K7306118", "88004521", "A0012345", "55550001"}
    assert registry.seed_demo(T) is False


def test_active_terminal(registry: Registry) -> None:
    status = registry.status("30091254", today=T)
    assert status.state is TerminalState.ACTIVE
    assert (status.merchant_name, status.device_type) == ("张记便利店", "电签POS")
    assert status.last_transaction_on == T - dt.timedelta(days=2)
    assert status.contract_ends_on == T + dt.timedelta(days=200)
    assert status.termination_fee_due == 200
    assert (status.deposit.amount, status.deposit.refundable_now, status.deposit.refundable_after_deregistration) == (
        299,
        False,
        True,
    )
    assert status.request_id is None


def test_dormant_terminal_deregisters_automatically_in_80_days(registry: Registry) -> None:
    status = registry.status("K7306118", today=T)
    assert status.state is TerminalState.DORMANT
    assert status.dormant_on == T - dt.timedelta(days=10)
    assert status.auto_deregister_on == T + dt.timedelta(days=80)
    assert status.days_until_auto_deregistration == 80
    assert status.termination_fee_due == 0
    assert status.deposit.amount == 99


def test_automatically_deregistered_terminal_has_a_refundable_deposit(registry: Registry) -> None:
    status = registry.status("88004521", today=T)
    assert status.state is TerminalState.AUTO_DEREGISTERED
    assert status.auto_deregister_on == T - dt.timedelta(days=20)
    assert status.days_until_auto_deregistration is None
    assert status.deposit == reg.pol.DepositInfo(199, False, True, True)
    assert status.request_id is None


def test_pending_request_completes_15_working_days_after_it_was_made(registry: Registry) -> None:
    status = registry.status("A0012345", today=T)
    assert status.state is TerminalState.DEREGISTRATION_IN_PROGRESS
    # 3 working days before 2026-09-30 skips the Mid-Autumn holiday: 2026-09-24.
    assert status.requested_on == dt.date(2026, 9, 24)
    assert status.completes_on == dt.date(2026, 10, 22)
    assert status.completion_is_estimate is False
    assert status.request_status == "pending" and status.request_source == "merchant"
    assert status.request_id is not None and status.request_id.startswith("ZX20260924")
    assert len(status.request_id) == 16 and status.request_id[2:].isalnum()
    assert registry.status("A0012345", today=dt.date(2026, 10, 22)).state is TerminalState.DEREGISTERED


def test_completed_request_and_refunded_deposit(registry: Registry) -> None:
    status = registry.status("55550001", today=T)
    assert status.state is TerminalState.DEREGISTERED
    assert status.request_status == "completed"
    assert status.deposit == reg.pol.DepositInfo(299, True, False, False)


def test_first_use_seeds_relative_to_today(make_registry: Callable[..., Registry]) -> None:
    registry = make_registry(auto_seed=True)
    status = registry.status("K7306118")
    assert status.today == dt.date.today()
    assert status.state is TerminalState.DORMANT
    assert status.days_until_auto_deregistration == 80
    assert registry.status("A0012345").state is TerminalState.DEREGISTRATION_IN_PROGRESS


def test_two_processes_seeding_at_once(make_registry: Callable[..., Registry]) -> None:
    registries = [make_registry(auto_seed=True) for _ in range(2)]
    counter = iter(registries)
    lock = threading.Lock()

    def first_use(_: int) -> object:
        with lock:
            own = next(counter)
        return own.find("30091254")

    results = run_in_threads(2, first_use)
    assert all(isinstance(result, reg.TerminalRecord) for result in results), results
    assert count_requests(registries[0], "A0012345") == 1


# --- lookup and verification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("k730-6118", "K7306118"),
        (" K730 6118 ", "K7306118"),
        ("Ｋ７３０６１１８", "K7306118"),
        ("3009-1254", "30091254"),
        ("K730611", None),
        ("K73061189", None),
        ("K730611*", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_terminal_id(text: str | None, expected: str | None) -> None:
    assert normalize_terminal_id(text) == expected


def test_find_normalises_and_misses(registry: Registry) -> None:
    record = registry.find("k730-6118")
    assert record is not None and record.terminal_id == "K7306118" and record.merchant_name == "李记水果店"
    assert registry.find("ZZZZ0000") is None
    assert registry.find("not an id") is None


def verifies(registry: Registry, terminal_id: str, tail: str) -> bool:
    check = registry.check_phone_tail(terminal_id, tail)
    assert not check.locked
    return check.verified


def test_check_phone_tail(registry: Registry) -> None:
    assert verifies(registry, "K7306118", "0839") is True
    assert verifies(registry, "k730-6118", "０８３９") is True
    assert verifies(registry, "K7306118", "0838") is False
    assert verifies(registry, "K7306118", "6721") is False
    assert verifies(registry, "K7306118", "839") is False
    assert verifies(registry, "ZZZZ0000", "0839") is False


def test_wrong_tails_lock_the_terminal_for_every_conversation_with_growing_back_off(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERMINAL_LOCK_FAILURES", "3")
    monkeypatch.setenv("TERMINAL_LOCK_MINUTES", "10")
    start = dt.datetime(2026, 12, 3, 8, 0)
    for minute in range(2):
        assert registry.check_phone_tail("K7306118", "0000", now=start + dt.timedelta(minutes=minute)).locked is False
    assert registry.check_phone_tail("K7306118", "0001", now=start + dt.timedelta(minutes=2)).locked is True
    # While locked, even the right tail is not checked; other terminals are not affected.
    assert registry.check_phone_tail("K7306118", "0839", now=start + dt.timedelta(minutes=11)) == TailCheck(False, True)
    assert registry.check_phone_tail("30091254", "6721", now=start + dt.timedelta(minutes=3)).verified is True
    # A new registry (a restart, or another process) sees the same lock.
    again = Registry(registry.engine.url.render_as_string(hide_password=False), auto_seed=False)
    assert again.check_phone_tail("K7306118", "0839", now=start + dt.timedelta(minutes=5)).locked is True
    # After the first lock (10 minutes), three more wrong tails lock for twice as long.
    after_first = start + dt.timedelta(minutes=13)
    for _ in range(3):
        check = registry.check_phone_tail("K7306118", "1111", now=after_first)
    assert check.locked is True
    assert registry.check_phone_tail("K7306118", "0839", now=after_first + dt.timedelta(minutes=19)).locked is True
    assert registry.check_phone_tail("K7306118", "0839", now=after_first + dt.timedelta(minutes=21)).verified is True
    # The right tail cleared the counter: the next wrong one starts again from one.
    assert registry.check_phone_tail("K7306118", "1111", now=after_first + dt.timedelta(minutes=22)).locked is False
    again.close()


def test_phone_tails_are_keyed_so_a_leaked_database_does_not_give_them_away(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = hashlib.sha256(b"K7306118:0839").hexdigest()
    with registry.engine.connect() as conn:
        stored = conn.execute(sa.select(terminals.c.phone_tail_hash)
                              .where(terminals.c.terminal_id == "K7306118")).scalar()
    assert stored != bare
    # Without the key, trying all 10,000 tails against the stored value finds nothing.
    assert all(hashlib.sha256(f"K7306118:{n:04d}".encode()).hexdigest() != stored for n in range(10000))
    monkeypatch.setenv("PHONE_TAIL_KEY", "another-key")
    assert hash_phone_tail("K7306118", "0839") != stored


def test_a_row_with_an_old_bare_hash_verifies_once_and_is_rekeyed(registry: Registry) -> None:
    bare = hashlib.sha256(b"K7306118:0839").hexdigest()
    with registry.engine.begin() as conn:
        conn.execute(terminals.update().where(terminals.c.terminal_id == "K7306118").values(phone_tail_hash=bare))
    assert registry.check_phone_tail("K7306118", "0838").verified is False
    assert registry.check_phone_tail("K7306118", "0839").verified is True
    with registry.engine.connect() as conn:
        stored = conn.execute(sa.select(terminals.c.phone_tail_hash)
                              .where(terminals.c.terminal_id == "K7306118")).scalar()
    assert stored == hash_phone_tail("K7306118", "0839") != bare


def test_phone_tail_is_not_stored_in_clear(registry: Registry) -> None:
    with registry.engine.connect() as conn:
        hashes = list(conn.execute(sa.select(terminals.c.phone_tail_hash)).scalars())
    assert len(hashes) == 5 and all(len(value) == 64 for value in hashes)
    tails = ("6721", "0839", "1456", "2290", "9088")
    # Neither the tail nor a digest anyone can compute without the key (a hex digest may contain
    # four digits by chance: with a random key, one of five digests holds a demo tail about one
    # run in ten, so "contains" is no test).
    guessable = {tail for tail in tails} | {hashlib.sha256(tail.encode()).hexdigest() for tail in tails}
    guessable |= {hashlib.sha256(f"{terminal}:{tail}".encode()).hexdigest()
                  for terminal in ("30091254", "K7306118", "88004521", "A0012345", "55550001") for tail in tails}
    assert guessable.isdisjoint(hashes)


def test_unknown_terminal_status(registry: Registry) -> None:
    with pytest.raises(TerminalNotFound):
        registry.status("ZZZZ0000", today=T)
    with pytest.raises(TerminalNotFound):
        registry.request_deregistration("bad", today=T)


# --- deregistration requests ---------------------------------------------------------------------------


def test_request_is_idempotent(registry: Registry) -> None:
    first, created = registry.request_deregistration("30091254", today=T)
    again, created_again = registry.request_deregistration("3009-1254", today=T)
    assert (created, created_again) == (True, False)
    assert again.request_id == first.request_id
    assert first.request_id.startswith("ZX20260930")
    # 10-08, 10-09, 10-10 (make-up Saturday), 10-12..16, 10-19..23, 10-26, 10-27 is the 15th.
    assert (first.completes_on, first.completion_is_estimate) == (dt.date(2026, 10, 27), False)
    assert count_requests(registry, "30091254") == 1
    status = registry.status("30091254", today=T)
    assert status.state is TerminalState.DEREGISTRATION_IN_PROGRESS
    assert status.request_id == first.request_id
    assert status.termination_fee_due == 200


def test_request_for_a_dormant_terminal(registry: Registry) -> None:
    request, created = registry.request_deregistration("K7306118", today=T)
    assert created and request.status == "pending" and request.source == "merchant"


def test_database_rejects_a_second_pending_request(registry: Registry) -> None:
    def row(request_id: str, status: str) -> dict[str, object]:
        return {
            "request_id": request_id,
            "terminal_id": "K7306118",
            "requested_on": T,
            "completes_on": T,
            "completion_is_estimate": False,
            "status": status,
            "source": "merchant",
            "created_at": dt.datetime.now(dt.timezone.utc),
        }

    with registry.engine.begin() as conn:
        conn.execute(deregistration_requests.insert(), [row("ZX20260930AAAAAA", "pending")])
        conn.execute(deregistration_requests.insert(), [row("ZX20260930BBBBBB", "completed")])
    with pytest.raises(sa_exc.IntegrityError):
        with registry.engine.begin() as conn:
            conn.execute(deregistration_requests.insert(), [row("ZX20260930CCCCCC", "pending")])
    assert count_requests(registry, "K7306118") == 2


def test_concurrent_requests_create_one(registry: Registry, make_registry: Callable[..., Registry]) -> None:
    workers = [make_registry() for _ in range(4)]
    for worker in workers:
        assert worker.find("K7306118") is not None  # schema ready before the race
    counter = iter(workers)
    lock = threading.Lock()

    def request(_: int) -> object:
        with lock:
            own = next(counter)
        return own.request_deregistration("K7306118", today=T)

    results = run_in_threads(4, request)
    assert all(isinstance(result, tuple) for result in results), results
    assert sorted(created for _, created in results) == [False, False, False, True]  # type: ignore[misc]
    assert len({request.request_id for request, _ in results}) == 1  # type: ignore[misc]
    assert count_requests(registry, "K7306118") == 1


@pytest.mark.parametrize(
    ("terminal_id", "state"),
    [("88004521", TerminalState.AUTO_DEREGISTERED), ("55550001", TerminalState.DEREGISTERED)],
)
def test_refuses_an_already_deregistered_terminal(registry: Registry, terminal_id: str, state: TerminalState) -> None:
    before = count_requests(registry, terminal_id)
    with pytest.raises(AlreadyDeregistered) as raised:
        registry.request_deregistration(terminal_id, today=T)
    assert raised.value.state is state
    assert count_requests(registry, terminal_id) == before


# --- failures ------------------------------------------------------------------------------------------------


def test_unreachable_database_raises_quickly(backend: Backend, make_registry: Callable[..., Registry]) -> None:
    registry = make_registry(backend.unreachable_url, auto_seed=True)
    for call in (
        lambda: registry.find("K7306118"),
        lambda: registry.check_phone_tail("K7306118", "0839"),
        lambda: registry.status("K7306118"),
        lambda: registry.request_deregistration("K7306118"),
    ):
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable):
            call()
        assert time.monotonic() - started < TIMEOUT


# --- settings and the default registry ---------------------------------------------------------------------


def test_settings_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TERMINAL_DB_URL", raising=False)
    monkeypatch.delenv("DB_TIMEOUT_SECONDS", raising=False)
    settings = get_settings()
    assert settings.terminal_db_url == f"sqlite:///{REPO_ROOT / 'var' / 'terminals.db'}"
    assert settings.db_timeout_seconds == 3 and settings.uses_default_db
    monkeypatch.setenv("TERMINAL_DB_URL", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setenv("DB_TIMEOUT_SECONDS", "1.5")
    settings = get_settings()
    assert settings.terminal_db_url.endswith("x.db") and settings.db_timeout_seconds == 1.5
    assert not settings.uses_default_db
    monkeypatch.setenv("DB_TIMEOUT_SECONDS", "soon")
    assert get_settings().db_timeout_seconds == 3


def test_demo_terminals_go_into_a_configured_database_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SEED_DEMO_TERMINALS", raising=False)
    monkeypatch.setenv("TERMINAL_DB_URL", f"sqlite:///{tmp_path / 'production.db'}")
    production = Registry()
    assert production.find("30091254") is None  # published tails must not open a real database
    production.close()
    monkeypatch.setenv("SEED_DEMO_TERMINALS", "1")
    monkeypatch.setenv("TERMINAL_DB_URL", f"sqlite:///{tmp_path / 'staging.db'}")
    staging = Registry()
    assert staging.find("30091254") is not None
    staging.close()


def test_database_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'private' / 'terminals.db'}", auto_seed=True)
    assert registry.find("30091254") is not None
    registry.close()
    assert (tmp_path / "private" / "terminals.db").stat().st_mode & 0o077 == 0
    assert (tmp_path / "private").stat().st_mode & 0o077 == 0


def test_default_registry_is_lazy_and_shared() -> None:
    reg.get_registry.cache_clear()
    try:
        default = reg.get_registry()
        assert default is reg.get_registry()
        assert default._engine is None  # nothing connects until first use
    finally:
        reg.get_registry.cache_clear()
