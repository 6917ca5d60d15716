"""Terminal registry: terminals and their deregistration requests, on SQLAlchemy (SQLite or PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import string
import threading
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url

from actions import policy as pol
from actions.config import get_settings, private_sqlite_file, seed_demo_requested
from lakala_common.text import compact_code

logger = logging.getLogger(__name__)

TERMINAL_ID_RE = re.compile(r"[0-9A-Z]{8}")
PHONE_TAIL_RE = re.compile(r"[0-9]{4}")
REQUEST_ID_ALPHABET = string.ascii_uppercase + string.digits
STATUS_PENDING = "pending"
STATUS_COMPLETED = "completed"
SOURCE_MERCHANT = "merchant"
SOURCE_SYSTEM = "system"

metadata = sa.MetaData()

terminals = sa.Table(
    "terminals",
    metadata,
    sa.Column("terminal_id", sa.String(8), primary_key=True),
    sa.Column("merchant_name", sa.String(100), nullable=False),
    sa.Column("device_type", sa.String(50), nullable=False),
    sa.Column("phone_tail_hash", sa.String(64), nullable=False),
    sa.Column("last_transaction_on", sa.Date, nullable=False),
    sa.Column("contract_ends_on", sa.Date, nullable=False),
    sa.Column("deposit_amount", sa.Integer, nullable=False, default=0),
    sa.Column("deposit_refunded", sa.Boolean, nullable=False, default=False),
    sa.Column("termination_fee", sa.Integer, nullable=False, default=0),
)

deregistration_requests = sa.Table(
    "deregistration_requests",
    metadata,
    sa.Column("request_id", sa.String(16), primary_key=True),
    sa.Column("terminal_id", sa.String(8), sa.ForeignKey("terminals.terminal_id"), nullable=False),
    sa.Column("requested_on", sa.Date, nullable=False),
    sa.Column("completes_on", sa.Date, nullable=False),
    sa.Column("completion_is_estimate", sa.Boolean, nullable=False, default=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'completed')", name="ck_deregistration_status"),
    sa.CheckConstraint("source IN ('merchant', 'system')", name="ck_deregistration_source"),
)

# Wrong phone tails per terminal, across conversations, processes and restarts. After
# `lock_failures` in a row the terminal is locked for `lock_minutes`, doubled at every
# further lock-out (at most a day); a right tail after a lock-out has expired clears it.
verification_failures = sa.Table(
    "verification_failures",
    metadata,
    sa.Column("terminal_id", sa.String(8), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False, default=0),
    sa.Column("lockouts", sa.Integer, nullable=False, default=0),
    sa.Column("locked_until", sa.DateTime, nullable=True),  # UTC
)
MAX_LOCK = dt.timedelta(days=1)

# The database, not the application, guarantees at most one pending request per terminal.
sa.Index(
    "uq_deregistration_one_pending",
    deregistration_requests.c.terminal_id,
    unique=True,
    sqlite_where=sa.text("status = 'pending'"),
    postgresql_where=sa.text("status = 'pending'"),
)


# Callback requests a merchant left for a person (actions/tickets.py). The row is also the
# outbox of its notification to the support team (actions/notify.py): due at notify_next_at,
# claimed by one action server until notify_lease_until, done at notified_at. Times are naive UTC.
callback_tickets = sa.Table(
    "callback_tickets",
    metadata,
    sa.Column("ticket_id", sa.String(20), primary_key=True),
    sa.Column("conversation", sa.String(255), nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("topic", sa.String(200), nullable=False),
    sa.Column("phone", sa.String(20), nullable=True),  # set NULL once closed for the retention period
    sa.Column("phone_masked", sa.String(20), nullable=False),
    sa.Column("terminal_id", sa.String(8), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("closed_at", sa.DateTime, nullable=True),
    sa.Column("close_note", sa.Text, nullable=True),
    sa.Column("notify_attempts", sa.Integer, nullable=False, default=0),
    sa.Column("notify_next_at", sa.DateTime, nullable=True, index=True),
    sa.Column("notify_lease_until", sa.DateTime, nullable=True),
    sa.Column("notified_at", sa.DateTime, nullable=True),
    sa.CheckConstraint("status IN ('open', 'closed')", name="ck_callback_ticket_status"),
)

# As for deregistrations: the database guarantees at most one open ticket per conversation.
sa.Index(
    "uq_callback_one_open",
    callback_tickets.c.conversation,
    unique=True,
    sqlite_where=sa.text("status = 'open'"),
    postgresql_where=sa.text("status = 'open'"),
)


class RegistryError(Exception):
    """Base class for registry failures."""


class RegistryUnavailable(RegistryError):
    """The database cannot be reached or did not answer in time."""


class TerminalNotFound(RegistryError):
    def __init__(self, terminal_id: str) -> None:
        super().__init__(f"terminal {terminal_id!r} not found")
        self.terminal_id = terminal_id


class AlreadyDeregistered(RegistryError):
    def __init__(self, terminal_id: str, state: pol.TerminalState) -> None:
        super().__init__(f"terminal {terminal_id} is already deregistered ({state.value})")
        self.terminal_id = terminal_id
        self.state = state


@dataclass(frozen=True)
class TerminalRecord:
    terminal_id: str
    merchant_name: str
    device_type: str
    last_transaction_on: dt.date
    contract_ends_on: dt.date
    deposit_amount: int
    deposit_refunded: bool
    termination_fee: int


@dataclass(frozen=True)
class DeregistrationRequest:
    request_id: str
    terminal_id: str
    requested_on: dt.date
    completes_on: dt.date
    completion_is_estimate: bool
    status: str
    source: str
    created_at: dt.datetime


@dataclass(frozen=True)
class TerminalStatus:
    terminal_id: str
    merchant_name: str
    device_type: str
    state: pol.TerminalState
    today: dt.date
    last_transaction_on: dt.date
    days_since_last_transaction: int
    dormant_on: dt.date
    auto_deregister_on: dt.date
    days_until_auto_deregistration: int | None
    contract_ends_on: dt.date
    termination_fee: int
    termination_fee_due: int
    deposit: pol.DepositInfo
    request_id: str | None
    request_status: str | None
    request_source: str | None
    requested_on: dt.date | None
    completes_on: dt.date | None
    completion_is_estimate: bool


@dataclass(frozen=True)
class TailCheck:
    """A phone-tail check: right or not, and whether the terminal is (now) locked."""

    verified: bool
    locked: bool


@dataclass(frozen=True)
class DemoTerminal:
    terminal_id: str
    merchant_name: str
    device_type: str
    phone_tail: str
    last_tx_days_ago: int
    contract_ends_in_days: int
    deposit_amount: int
    deposit_refunded: bool
    termination_fee: int
    request: str | None  # None, "pending" (3 working days before T) or "completed"


DEMO_TERMINALS: tuple[DemoTerminal, ...] = (
    DemoTerminal("30091254", "张记便利店", "电签POS", "6721", 2, 200, 299, False, 200, None),
    DemoTerminal("K7306118", "李记水果店", "手机POS", "0839", 100, -30, 99, False, 0, None),
    DemoTerminal("88004521", "王家小馆", "智能POS", "1456", 200, -100, 199, False, 0, None),
    DemoTerminal("A0012345", "赵氏五金", "电签POS", "2290", 10, -5, 0, False, 0, STATUS_PENDING),
    DemoTerminal("55550001", "孙家超市", "传统POS", "9088", 400, -300, 299, True, 0, STATUS_COMPLETED),
)
DEMO_PENDING_REQUESTED_WORKING_DAYS_BEFORE = 3
DEMO_COMPLETED_REQUESTED_DAYS_AFTER_LAST_TX = 20


def normalize_terminal_id(text: str | None) -> str | None:
    """Half-width, upper-case, spaces and dashes removed; the id if exactly 8 of [0-9A-Z]."""
    cleaned = compact_code(text)
    return cleaned if TERMINAL_ID_RE.fullmatch(cleaned) else None


def normalize_phone_tail(text: str | None) -> str | None:
    cleaned = compact_code(text)
    return cleaned if PHONE_TAIL_RE.fullmatch(cleaned) else None


_key_lock = threading.Lock()
_file_key: bytes | None = None


def phone_tail_key() -> bytes:
    """The HMAC key for phone tails, kept outside the database: PHONE_TAIL_KEY, or else a
    random key made once in var/phone_tail.key (owner-only) for a local installation.
    With only 10,000 possible tails, a bare hash in a leaked database gives them all away."""
    global _file_key
    configured = get_settings().phone_tail_key
    if configured:
        return configured.encode()
    with _key_lock:
        if _file_key is None:
            path = get_settings().var_dir / "phone_tail.key"
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(descriptor, "w") as key_file:
                    key_file.write(secrets.token_hex(32))
            _file_key = path.read_text().strip().encode()
            logger.warning("PHONE_TAIL_KEY is not set: phone tails are keyed with var/phone_tail.key")
        return _file_key


def hash_phone_tail(terminal_id: str, tail: str) -> str:
    return hmac.new(phone_tail_key(), f"{terminal_id}:{tail}".encode(), hashlib.sha256).hexdigest()


def _legacy_hash(terminal_id: str, tail: str) -> str:
    """The bare SHA-256 of earlier versions; replaced by the HMAC at the first right tail."""
    return hashlib.sha256(f"{terminal_id}:{tail}".encode()).hexdigest()


def new_request_id(on: dt.date) -> str:
    suffix = "".join(secrets.choice(REQUEST_ID_ALPHABET) for _ in range(6))
    return f"ZX{on:%Y%m%d}{suffix}"


def _is_already_exists(error: sa_exc.DBAPIError) -> bool:
    return isinstance(error, sa_exc.IntegrityError) or "already exists" in str(error.orig).lower()


def _request_from_row(row: Any) -> DeregistrationRequest:
    return DeregistrationRequest(
        request_id=row.request_id,
        terminal_id=row.terminal_id,
        requested_on=row.requested_on,
        completes_on=row.completes_on,
        completion_is_estimate=bool(row.completion_is_estimate),
        status=row.status,
        source=row.source,
        created_at=row.created_at,
    )


def _record_from_row(row: Any) -> TerminalRecord:
    return TerminalRecord(
        terminal_id=row.terminal_id,
        merchant_name=row.merchant_name,
        device_type=row.device_type,
        last_transaction_on=row.last_transaction_on,
        contract_ends_on=row.contract_ends_on,
        deposit_amount=int(row.deposit_amount),
        deposit_refunded=bool(row.deposit_refunded),
        termination_fee=int(row.termination_fee),
    )


class Registry:
    """The terminal registry; the engine, tables and demo data are created on first use."""

    def __init__(
        self,
        url: str | None = None,
        timeout_seconds: float | None = None,
        *,
        policy: pol.Policy | None = None,
        auto_seed: bool | None = None,
    ) -> None:
        """auto_seed: seed the demo terminals into an empty database; by default only into the
        default local database, or when SEED_DEMO_TERMINALS=1 (never into a configured one)."""
        self._url = url
        self._timeout = timeout_seconds
        self._policy = policy
        self._auto_seed = auto_seed
        self._engine: Engine | None = None
        self._ready = False
        self._lock = threading.Lock()

    # --- engine and schema ------------------------------------------------------------------

    @property
    def policy(self) -> pol.Policy:
        if self._policy is None:
            self._policy = pol.load_policy()
        return self._policy

    @property
    def engine(self) -> Engine:
        """The engine, with tables created and demo data seeded (raises RegistryUnavailable)."""
        if not self._ready:
            with self._lock, self._db_errors():
                if not self._ready:
                    engine = self._engine or self._create_engine()
                    self._engine = engine
                    self._create_schema(engine)
                    if self._should_seed():
                        self._seed_if_empty(engine)
                    self._ready = True
        assert self._engine is not None
        return self._engine

    def _should_seed(self) -> bool:
        if self._auto_seed is not None:
            return self._auto_seed
        return (self._url is None and get_settings().uses_default_db) or seed_demo_requested()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        self._engine, self._ready = None, False

    def _create_engine(self) -> Engine:
        settings = get_settings()
        timeout = self._timeout if self._timeout is not None else settings.db_timeout_seconds
        if self._url is None:
            try:
                settings.ensure_local_dirs()
            except OSError as error:
                raise RegistryUnavailable(f"cannot create the database directory: {error}") from error
        try:
            private_sqlite_file(self._url or settings.terminal_db_url)
        except OSError as error:
            raise RegistryUnavailable(f"cannot create the database file: {error}") from error
        url = make_url(self._url or settings.terminal_db_url)
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "future": True}
        if url.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"timeout": timeout}
        elif url.get_backend_name() == "postgresql":
            kwargs["connect_args"] = self._postgres_connect_args(url, timeout)
            kwargs["pool_timeout"] = timeout
        return sa.create_engine(url, **kwargs)

    @staticmethod
    def _postgres_connect_args(url: Any, timeout: float) -> dict[str, Any]:
        options = f"-c statement_timeout={int(timeout * 1000)}"
        # connect_args replace the URL's own libpq options (e.g. a search_path), so keep them.
        existing = url.query.get("options")
        if isinstance(existing, str) and existing.strip():
            options = f"{existing} {options}"
        return {"connect_timeout": max(1, math.ceil(timeout)), "options": options}

    @staticmethod
    def _create_schema(engine: Engine, attempts: int = 5) -> None:
        for attempt in range(attempts):
            try:
                metadata.create_all(engine)
                return
            except sa_exc.DBAPIError as error:
                # Another process is creating the same tables (one per pass can collide);
                # the next pass skips whatever now exists.
                if not _is_already_exists(error) or attempt == attempts - 1:
                    raise

    def _seed_if_empty(self, engine: Engine) -> None:
        with engine.connect() as conn:
            has_rows = conn.execute(sa.select(terminals.c.terminal_id).limit(1)).first()
        if has_rows is None:
            self._insert_demo(engine, dt.date.today(), replace=False)

    @contextmanager
    def _db_errors(self) -> Iterator[None]:
        try:
            yield
        except sa_exc.IntegrityError as error:
            raise RegistryError("the registry rejected conflicting data") from error
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as error:
            logger.warning("Terminal registry unavailable: %s", type(error).__name__)
            raise RegistryUnavailable(str(error).splitlines()[0]) from error
        except sa_exc.SQLAlchemyError as error:
            raise RegistryError(type(error).__name__) from error

    def db_errors(self) -> AbstractContextManager[None]:
        """Database errors raised inside as RegistryError or RegistryUnavailable, for the
        stores that share this engine (actions/tickets.py)."""
        return self._db_errors()

    # --- seeding ----------------------------------------------------------------------------

    def seed_demo(self, today: dt.date, *, replace: bool = False) -> bool:
        """Insert the contract's demo terminals relative to today; True if they were written."""
        engine = self.engine
        with self._db_errors():
            return self._insert_demo(engine, today, replace=replace)

    def _insert_demo(self, engine: Engine, today: dt.date, *, replace: bool) -> bool:
        terminal_rows, request_rows = self._demo_rows(today)
        ids = [row["terminal_id"] for row in terminal_rows]
        try:
            with engine.begin() as conn:
                if replace:
                    conn.execute(
                        deregistration_requests.delete().where(deregistration_requests.c.terminal_id.in_(ids))
                    )
                    conn.execute(terminals.delete().where(terminals.c.terminal_id.in_(ids)))
                conn.execute(terminals.insert(), terminal_rows)
                if request_rows:
                    conn.execute(deregistration_requests.insert(), request_rows)
        except sa_exc.IntegrityError:
            logger.info("Demo terminals already present; seeding skipped")
            return False
        return True

    def _demo_rows(self, today: dt.date) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        terminal_rows: list[dict[str, Any]] = []
        request_rows: list[dict[str, Any]] = []
        for demo in DEMO_TERMINALS:
            last_tx = today - dt.timedelta(days=demo.last_tx_days_ago)
            terminal_rows.append(
                {
                    "terminal_id": demo.terminal_id,
                    "merchant_name": demo.merchant_name,
                    "device_type": demo.device_type,
                    "phone_tail_hash": hash_phone_tail(demo.terminal_id, demo.phone_tail),
                    "last_transaction_on": last_tx,
                    "contract_ends_on": today + dt.timedelta(days=demo.contract_ends_in_days),
                    "deposit_amount": demo.deposit_amount,
                    "deposit_refunded": demo.deposit_refunded,
                    "termination_fee": demo.termination_fee,
                }
            )
            if demo.request == STATUS_PENDING:
                requested = pol.working_days_before(today, DEMO_PENDING_REQUESTED_WORKING_DAYS_BEFORE).date
                request_rows.append(self._request_row(demo.terminal_id, requested, STATUS_PENDING))
            elif demo.request == STATUS_COMPLETED:
                requested = last_tx + dt.timedelta(days=DEMO_COMPLETED_REQUESTED_DAYS_AFTER_LAST_TX)
                request_rows.append(self._request_row(demo.terminal_id, requested, STATUS_COMPLETED))
        return terminal_rows, request_rows

    def _request_row(
        self, terminal_id: str, requested_on: dt.date, status: str, source: str = SOURCE_MERCHANT
    ) -> dict[str, Any]:
        completion = pol.completion_date(requested_on, self.policy)
        return {
            "request_id": new_request_id(requested_on),
            "terminal_id": terminal_id,
            "requested_on": requested_on,
            "completes_on": completion.date,
            "completion_is_estimate": completion.is_estimate,
            "status": status,
            "source": source,
            "created_at": dt.datetime.now(dt.timezone.utc),
        }

    # --- queries ----------------------------------------------------------------------------

    @staticmethod
    def _terminal_row(conn: Connection, terminal_id: str) -> Any:
        return conn.execute(sa.select(terminals).where(terminals.c.terminal_id == terminal_id)).first()

    @staticmethod
    def _request(conn: Connection, terminal_id: str, status: str) -> DeregistrationRequest | None:
        query = (
            sa.select(deregistration_requests)
            .where(deregistration_requests.c.terminal_id == terminal_id)
            .where(deregistration_requests.c.status == status)
            .order_by(deregistration_requests.c.created_at.desc())
            .limit(1)
        )
        row = conn.execute(query).first()
        return _request_from_row(row) if row is not None else None

    def find(self, terminal_id: str) -> TerminalRecord | None:
        normalized = normalize_terminal_id(terminal_id)
        if normalized is None:
            return None
        engine = self.engine
        with self._db_errors(), engine.connect() as conn:
            row = self._terminal_row(conn, normalized)
        return _record_from_row(row) if row is not None else None

    def check_phone_tail(self, terminal_id: str, tail: str, now: dt.datetime | None = None) -> TailCheck:
        """Checks a tail against the terminal's lock-out: a locked terminal checks nothing."""
        normalized_id = normalize_terminal_id(terminal_id)
        normalized_tail = normalize_phone_tail(tail)
        if normalized_id is None or normalized_tail is None:
            return TailCheck(verified=False, locked=False)
        now = now or dt.datetime.utcnow()
        engine = self.engine
        with self._db_errors():
            for attempt in range(2):
                try:
                    with engine.begin() as conn:
                        return self._check_in_transaction(conn, normalized_id, normalized_tail, now)
                except sa_exc.IntegrityError:
                    if attempt:  # another process created the same counter row twice in a row
                        raise
        raise RegistryError("unreachable")

    def _check_in_transaction(self, conn: Connection, terminal_id: str, tail: str, now: dt.datetime) -> TailCheck:
        table = verification_failures
        counter = conn.execute(
            sa.select(table).where(table.c.terminal_id == terminal_id).with_for_update()
        ).first()
        if counter is not None and counter.locked_until is not None and counter.locked_until > now:
            return TailCheck(verified=False, locked=True)
        stored = conn.execute(
            sa.select(terminals.c.phone_tail_hash).where(terminals.c.terminal_id == terminal_id)
        ).scalar()
        expected = stored or hash_phone_tail(terminal_id, "")
        keyed = hash_phone_tail(terminal_id, tail)
        right = hmac.compare_digest(expected, keyed)
        if stored is not None and not right and hmac.compare_digest(expected, _legacy_hash(terminal_id, tail)):
            right = True  # a row from before the keyed hash: upgrade it now
            conn.execute(terminals.update().where(terminals.c.terminal_id == terminal_id)
                         .values(phone_tail_hash=keyed))
        if stored is not None and right:
            if counter is not None:
                conn.execute(table.delete().where(table.c.terminal_id == terminal_id))
            return TailCheck(verified=True, locked=False)
        if counter is None:
            conn.execute(table.insert().values(terminal_id=terminal_id, failures=0, lockouts=0))
        conn.execute(table.update().where(table.c.terminal_id == terminal_id)
                     .values(failures=table.c.failures + 1))
        failures, lockouts = conn.execute(
            sa.select(table.c.failures, table.c.lockouts).where(table.c.terminal_id == terminal_id)
        ).one()
        settings = get_settings()
        if failures < settings.lock_failures:
            return TailCheck(verified=False, locked=False)
        lock = min(dt.timedelta(minutes=settings.lock_minutes) * 2 ** min(lockouts, 16), MAX_LOCK)
        conn.execute(table.update().where(table.c.terminal_id == terminal_id)
                     .values(failures=0, lockouts=lockouts + 1, locked_until=now + lock))
        logger.warning("terminal locked for %s after %s wrong phone tails", lock, failures)
        return TailCheck(verified=False, locked=True)

    def status(self, terminal_id: str, today: dt.date | None = None) -> TerminalStatus:
        normalized = normalize_terminal_id(terminal_id)
        if normalized is None:
            raise TerminalNotFound(str(terminal_id))
        engine = self.engine
        with self._db_errors(), engine.connect() as conn:
            row = self._terminal_row(conn, normalized)
            if row is None:
                raise TerminalNotFound(normalized)
            pending = self._request(conn, normalized, STATUS_PENDING)
            completed = self._request(conn, normalized, STATUS_COMPLETED)
        return self._build_status(_record_from_row(row), pending, completed, today or dt.date.today())

    def _build_status(
        self,
        record: TerminalRecord,
        pending: DeregistrationRequest | None,
        completed: DeregistrationRequest | None,
        today: dt.date,
    ) -> TerminalStatus:
        policy = self.policy
        last_tx = record.last_transaction_on
        state = pol.terminal_state(
            last_tx, pending.completes_on if pending else None, completed is not None, today, policy
        )
        auto_on = pol.auto_deregister_on(last_tx, policy)
        request = pending or completed
        fee_date = request.requested_on if request is not None else today
        fee_due = 0 if state.is_deregistered else pol.termination_fee_due(
            record.contract_ends_on, record.termination_fee, fee_date
        )
        return TerminalStatus(
            terminal_id=record.terminal_id,
            merchant_name=record.merchant_name,
            device_type=record.device_type,
            state=state,
            today=today,
            last_transaction_on=last_tx,
            days_since_last_transaction=(today - last_tx).days,
            dormant_on=pol.dormant_since(last_tx, policy),
            auto_deregister_on=auto_on,
            days_until_auto_deregistration=(auto_on - today).days if request is None and auto_on > today else None,
            contract_ends_on=record.contract_ends_on,
            termination_fee=record.termination_fee,
            termination_fee_due=fee_due,
            deposit=pol.deposit_info(record.deposit_amount, record.deposit_refunded, state),
            request_id=request.request_id if request else None,
            request_status=request.status if request else None,
            request_source=request.source if request else None,
            requested_on=request.requested_on if request else None,
            completes_on=request.completes_on if request else None,
            completion_is_estimate=request.completion_is_estimate if request else False,
        )

    # --- commands ---------------------------------------------------------------------------

    def request_deregistration(
        self, terminal_id: str, today: dt.date | None = None
    ) -> tuple[DeregistrationRequest, bool]:
        """Record a merchant's request; (request, created). An existing pending request is returned."""
        normalized = normalize_terminal_id(terminal_id)
        if normalized is None:
            raise TerminalNotFound(str(terminal_id))
        today = today or dt.date.today()
        engine = self.engine
        # A lost race (unique index) or a request-id collision both end in IntegrityError: re-read and retry.
        for _ in range(3):
            with self._db_errors():
                try:
                    with engine.begin() as conn:
                        return self._request_in_transaction(conn, normalized, today)
                except sa_exc.IntegrityError:
                    logger.info("Concurrent deregistration request for %s; re-reading", normalized)
        raise RegistryError(f"could not record a deregistration request for {normalized}")

    def _request_in_transaction(
        self, conn: Connection, terminal_id: str, today: dt.date
    ) -> tuple[DeregistrationRequest, bool]:
        row = self._terminal_row(conn, terminal_id)
        if row is None:
            raise TerminalNotFound(terminal_id)
        pending = self._request(conn, terminal_id, STATUS_PENDING)
        completed = self._request(conn, terminal_id, STATUS_COMPLETED)
        status = self._build_status(_record_from_row(row), pending, completed, today)
        if status.state.is_deregistered:
            raise AlreadyDeregistered(terminal_id, status.state)
        if pending is not None:
            return pending, False
        values = self._request_row(terminal_id, today, STATUS_PENDING)
        conn.execute(deregistration_requests.insert().values(**values))
        return DeregistrationRequest(**values), True


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry from the settings; nothing connects until it is first used."""
    return Registry()
