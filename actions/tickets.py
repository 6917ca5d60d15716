"""Callback tickets: a merchant who wants a person and cannot be transferred leaves a topic and
a mobile number, and the support team calls back.

Tickets live in the registry's database (table `callback_tickets` in actions/registry.py, on
the same engine), at most one open ticket per conversation, which the database enforces with a
partial unique index. The phone number is kept because someone must call it; everywhere but the
CLI's `show` it appears masked (138****5678), and it is deleted (set NULL) once the ticket has
been closed for TICKET_PHONE_RETENTION_DAYS (`purge_phones`). The topic is stored with long
digit runs (mobiles, card and ID numbers) masked: the phone has its own column, which is purged.

The row is also the outbox of the team's notification (actions/notify.py): a new ticket is due
at once; a poster claims it with a conditional UPDATE that takes a short lease, so two action
servers never post the same ticket at the same time; a failed post is retried after 5 s, 10 s,
20 s ... at most 10 minutes apart, for as long as the ticket is open. A ticket is never deleted.

Every method blocks (callers in the event loop use asyncio.to_thread) and raises the registry's
RegistryError / RegistryUnavailable on database trouble, ValueError on invalid input.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from actions.config import get_settings
from actions.registry import (
    REQUEST_ID_ALPHABET,
    Registry,
    RegistryError,
    callback_tickets,
    get_registry,
    normalize_terminal_id,
)

logger = logging.getLogger(__name__)

STATUS_OPEN = "open"
STATUS_CLOSED = "closed"
TICKET_PREFIX = "HJ"  # callback tickets; deregistration requests are ZX...
TICKET_ID_RE = re.compile(rf"{TICKET_PREFIX}[0-9]{{8}}[0-9A-Z]{{6}}")
BEIJING = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")  # no daylight saving since 1991

TOPIC_MAX_CHARS = 200
NOTE_MAX_CHARS = 2000
CONVERSATION_MAX_CHARS = 255
CHANNEL_MAX_CHARS = 32
MOBILE_INPUT_MAX_CHARS = 40  # longer input is not a phone number, whatever it holds

BACKOFF_FIRST_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 600.0
DEFAULT_LEASE_SECONDS = 30.0

MASK = "****"
_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"), "-")
# What a typed mobile may consist of before folding: ASCII and full-width digits, spaces, dashes, a plus.
_MOBILE_CHARS = re.compile(r"[0-9\uff10-\uff19 \u3000+\uff0b\-\u2010-\u2015\u2212\ufe63\uff0d]+")
_MOBILE_IN_TEXT = re.compile(
    r"(?<![0-9])(?<![0-9][ -])(?:(?:\+|00)?86[ -]?)?1[3-9](?:[ -]?[0-9]){9}(?![ -]?[0-9])"
)
# Nine or more digits (ASCII or full-width, one space or dash allowed between them): mobiles,
# card and ID numbers. Terminal numbers (8) and amounts stay readable.
_LONG_NUMBER = re.compile(r"(?<![0-9０-９])[0-9０-９](?:[ \u3000-]?[0-9０-９]){8,}(?![0-9０-９])")
_ID_CARD = re.compile(r"(?<![0-9A-Za-z])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")


class TicketNotFound(RegistryError):
    def __init__(self, ticket_id: str) -> None:
        super().__init__(f"ticket {ticket_id!r} not found")
        self.ticket_id = ticket_id


class TicketClosed(RegistryError):
    def __init__(self, ticket_id: str, closed_at: dt.datetime | None) -> None:
        super().__init__(f"ticket {ticket_id} is already closed")
        self.ticket_id = ticket_id
        self.closed_at = closed_at


@dataclass(frozen=True)
class Ticket:
    """A callback ticket as everyone but the caller sees it: the phone only masked.
    Times are timezone-aware UTC."""

    ticket_id: str
    conversation: str
    channel: str
    topic: str
    phone_masked: str
    terminal_id: str | None
    status: str
    created_at: dt.datetime
    closed_at: dt.datetime | None
    close_note: str | None
    notify_attempts: int
    notified_at: dt.datetime | None

    @property
    def is_open(self) -> bool:
        return self.status == STATUS_OPEN


# --- phone numbers and text ----------------------------------------------------------------------


def normalize_mobile(text: Any) -> str | None:
    """The 11 digits of a mainland mobile number typed with spaces, dashes, full-width digits
    or a +86 / 0086 / 86 prefix; None for anything else (other digits, letters, other scripts'
    numerals, several numbers, text around it, over-long input)."""
    if not isinstance(text, str) or len(text) > MOBILE_INPUT_MAX_CHARS:
        return None
    stripped = text.strip()
    if not stripped or not _MOBILE_CHARS.fullmatch(stripped):
        return None
    compact = re.sub(r"[ -]", "", unicodedata.normalize("NFKC", stripped).translate(_DASHES))
    for prefix in ("+86", "0086", "86"):
        if compact.startswith(prefix) and len(compact) == len(prefix) + 11:
            compact = compact[len(prefix):]
            break
    return compact if _MOBILE.fullmatch(compact) else None


def find_mobile(text: Any) -> str | None:
    """The one mainland mobile number in a sentence ("我的电话 138 0013 8000"), normalised;
    None if there is none or more than one different number."""
    if not isinstance(text, str) or len(text) > 1000:
        return None
    folded = unicodedata.normalize("NFKC", text).translate(_DASHES)
    found = {normalize_mobile(match.group()) for match in _MOBILE_IN_TEXT.finditer(folded)}
    found.discard(None)
    return found.pop() if len(found) == 1 else None


def mask_phone(phone: Any) -> str:
    """138****5678 for a mobile number; **** for anything else."""
    digits = normalize_mobile(phone)
    return f"{digits[:3]}{MASK}{digits[-4:]}" if digits else MASK


def one_line(text: Any) -> str:
    """Text safe to print on one line of a terminal or a chat message: control and formatting
    characters (escape sequences, bidi overrides, zero-width marks) and line breaks become
    spaces, runs of spaces one."""
    chars = []
    for char in str(text or ""):
        category = unicodedata.category(char)
        chars.append(" " if category[0] in "CZ" else char)
    return " ".join("".join(chars).split())


def mask_long_numbers(text: str) -> str:
    """Runs of nine or more digits (mobiles, bank cards, ID numbers) as ****."""
    return _LONG_NUMBER.sub(MASK, _ID_CARD.sub(MASK, text))


def clean_topic(topic: Any) -> str:
    """The topic as stored: one line, long numbers masked, at most TOPIC_MAX_CHARS."""
    cleaned = mask_long_numbers(one_line(topic))[:TOPIC_MAX_CHARS].strip()
    if not cleaned:
        raise ValueError("a callback ticket needs a topic")
    return cleaned


def clean_note(note: Any) -> str:
    """A closing note: lines kept, other control characters dropped, at most NOTE_MAX_CHARS."""
    lines = [one_line(line) for line in str(note or "").splitlines()]
    cleaned = "\n".join(line for line in lines if line)[:NOTE_MAX_CHARS].strip()
    if not cleaned:
        raise ValueError("closing a ticket needs a note")
    return cleaned


def normalize_ticket_id(text: Any) -> str | None:
    cleaned = str(text or "").strip().upper()
    return cleaned if TICKET_ID_RE.fullmatch(cleaned) else None


def new_ticket_id(moment: dt.datetime) -> str:
    """HJ + the Beijing date + 6 random upper-case letters or digits."""
    suffix = "".join(secrets.choice(REQUEST_ID_ALPHABET) for _ in range(6))
    return f"{TICKET_PREFIX}{_as_utc(moment).astimezone(BEIJING):%Y%m%d}{suffix}"


def backoff(failures: int) -> dt.timedelta:
    """The wait after the n-th failed post in a row: 5 s, 10 s, 20 s ... at most 10 minutes."""
    exponent = min(max(failures, 1) - 1, 16)
    return dt.timedelta(seconds=min(BACKOFF_FIRST_SECONDS * 2**exponent, BACKOFF_MAX_SECONDS))


# --- times -----------------------------------------------------------------------------------------


def _as_utc(moment: dt.datetime) -> dt.datetime:
    """Aware UTC; a naive time is taken as UTC already."""
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment.astimezone(dt.timezone.utc)


def _db_time(moment: dt.datetime | None) -> dt.datetime:
    """The naive UTC the table stores."""
    return _as_utc(moment or dt.datetime.now(dt.timezone.utc)).replace(tzinfo=None)


def _read_time(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else _as_utc(value)


def _ticket(row: Any) -> Ticket:
    return Ticket(
        ticket_id=row.ticket_id,
        conversation=row.conversation,
        channel=row.channel,
        topic=row.topic,
        phone_masked=row.phone_masked,
        terminal_id=row.terminal_id,
        status=row.status,
        created_at=_as_utc(row.created_at),
        closed_at=_read_time(row.closed_at),
        close_note=row.close_note,
        notify_attempts=int(row.notify_attempts or 0),
        notified_at=_read_time(row.notified_at),
    )


# --- the store -------------------------------------------------------------------------------------

T = callback_tickets


class TicketStore:
    """Callback tickets in the registry's database."""

    def __init__(self, registry: Registry | None = None, *, phone_retention_days: float | None = None) -> None:
        """phone_retention_days: by default TICKET_PHONE_RETENTION_DAYS at the time of each purge."""
        self._registry = registry if registry is not None else get_registry()
        self._retention_days = phone_retention_days

    @property
    def registry(self) -> Registry:
        return self._registry

    # --- merchants' side ---------------------------------------------------------------------

    def open_ticket(
        self,
        conversation: str,
        channel: str,
        topic: str,
        phone: str,
        terminal_id: str | None = None,
        now: dt.datetime | None = None,
    ) -> tuple[Ticket, bool]:
        """(ticket, created): the conversation's open ticket if it has one (created False, the
        new details ignored), else a new one, due for notification at once. Safe when called
        concurrently for one conversation, from any number of processes."""
        conversation = str(conversation or "").strip()
        if not conversation or len(conversation) > CONVERSATION_MAX_CHARS:
            raise ValueError("a callback ticket needs its conversation's sender id (at most 255 characters)")
        channel = one_line(channel).lower()
        if not channel or len(channel) > CHANNEL_MAX_CHARS:
            raise ValueError("a callback ticket needs its channel's name (at most 32 characters)")
        topic = clean_topic(topic)
        mobile = normalize_mobile(phone)
        if mobile is None:
            raise ValueError("not a mainland mobile number")
        terminal = None
        if terminal_id:
            terminal = normalize_terminal_id(terminal_id)
            if terminal is None:
                raise ValueError("not a terminal number")
        moment = _db_time(now)
        engine = self._registry.engine
        # A lost race (the unique index) or a ticket-id collision ends in IntegrityError: re-read.
        for _ in range(3):
            with self._registry.db_errors():
                try:
                    with engine.begin() as conn:
                        existing = self._open_row(conn, conversation)
                        if existing is not None:
                            return _ticket(existing), False
                        ticket_id = new_ticket_id(moment)
                        conn.execute(T.insert().values(
                            ticket_id=ticket_id, conversation=conversation, channel=channel, topic=topic,
                            phone=mobile, phone_masked=mask_phone(mobile), terminal_id=terminal,
                            status=STATUS_OPEN, created_at=moment, notify_attempts=0, notify_next_at=moment,
                        ))
                        row = conn.execute(sa.select(T).where(T.c.ticket_id == ticket_id)).one()
                    logger.info("Callback ticket %s opened (channel %s)", ticket_id, channel)
                    return _ticket(row), True
                except sa_exc.IntegrityError:
                    logger.info("Concurrent callback ticket for one conversation; re-reading")
        raise RegistryError("could not record a callback ticket")

    @staticmethod
    def _open_row(conn: Connection, conversation: str) -> Any:
        return conn.execute(
            sa.select(T).where(T.c.conversation == conversation).where(T.c.status == STATUS_OPEN)
        ).first()

    def open_for(self, conversation: str) -> Ticket | None:
        engine = self._registry.engine
        with self._registry.db_errors(), engine.connect() as conn:
            row = self._open_row(conn, str(conversation or "").strip())
        return _ticket(row) if row is not None else None

    # --- the support team's side -------------------------------------------------------------

    def get(self, ticket_id: str) -> Ticket | None:
        row = self._row(ticket_id)
        return _ticket(row) if row is not None else None

    def phone_of(self, ticket_id: str) -> str | None:
        """The full phone number, for the person calling back; None once purged or if unknown."""
        row = self._row(ticket_id)
        return row.phone if row is not None else None

    def _row(self, ticket_id: str) -> Any:
        key = normalize_ticket_id(ticket_id)
        if key is None:
            return None
        engine = self._registry.engine
        with self._registry.db_errors(), engine.connect() as conn:
            return conn.execute(sa.select(T).where(T.c.ticket_id == key)).first()

    def list_open(self) -> list[Ticket]:
        """Open tickets, oldest first."""
        engine = self._registry.engine
        query = sa.select(T).where(T.c.status == STATUS_OPEN).order_by(T.c.created_at, T.c.ticket_id)
        with self._registry.db_errors(), engine.connect() as conn:
            return [_ticket(row) for row in conn.execute(query)]

    def close(self, ticket_id: str, note: str, now: dt.datetime | None = None) -> Ticket:
        """Closes an open ticket with a note; TicketNotFound, TicketClosed, ValueError (no note)."""
        text = clean_note(note)
        key = normalize_ticket_id(ticket_id)
        if key is None:
            raise TicketNotFound(str(ticket_id))
        moment = _db_time(now)
        engine = self._registry.engine
        with self._registry.db_errors(), engine.begin() as conn:
            closed = conn.execute(
                T.update().where(T.c.ticket_id == key).where(T.c.status == STATUS_OPEN)
                .values(status=STATUS_CLOSED, closed_at=moment, close_note=text, notify_lease_until=None)
            ).rowcount
            row = conn.execute(sa.select(T).where(T.c.ticket_id == key)).first()
        if row is None:
            raise TicketNotFound(key)
        if not closed:
            raise TicketClosed(key, _read_time(row.closed_at))
        logger.info("Callback ticket %s closed", key)
        return _ticket(row)

    def purge_phones(self, now: dt.datetime | None = None) -> int:
        """Deletes the phone numbers of tickets closed at least the retention period ago;
        how many were deleted."""
        days = self._retention_days
        if days is None:
            days = get_settings().ticket_phone_retention_days
        cutoff = _db_time(now) - dt.timedelta(days=days)
        engine = self._registry.engine
        with self._registry.db_errors(), engine.begin() as conn:
            purged = conn.execute(
                T.update().where(T.c.status == STATUS_CLOSED).where(T.c.phone.isnot(None))
                .where(T.c.closed_at <= cutoff).values(phone=None)
            ).rowcount
        if purged:
            logger.info("Deleted the phone numbers of %s closed callback tickets", purged)
        return int(purged or 0)

    # --- the notification outbox -------------------------------------------------------------

    @staticmethod
    def _due(moment: dt.datetime) -> Any:
        return sa.and_(
            T.c.status == STATUS_OPEN,
            T.c.notified_at.is_(None),
            T.c.notify_next_at.isnot(None),
            T.c.notify_next_at <= moment,
            sa.or_(T.c.notify_lease_until.is_(None), T.c.notify_lease_until <= moment),
        )

    def claim_due(
        self, now: dt.datetime | None = None, limit: int = 10, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> list[Ticket]:
        """Open tickets whose notification is due, each now leased to the caller for
        lease_seconds: nobody else claims them until the lease ends or they are marked. Each
        claim is a conditional UPDATE, so of two callers racing for a ticket one gets it."""
        moment = _db_time(now)
        until = moment + dt.timedelta(seconds=lease_seconds)
        due = self._due(moment)
        engine = self._registry.engine
        claimed: list[Ticket] = []
        with self._registry.db_errors():
            with engine.connect() as conn:
                candidates = list(conn.execute(
                    sa.select(T.c.ticket_id).where(due).order_by(T.c.notify_next_at, T.c.created_at)
                    .limit(max(1, limit))
                ).scalars())
            for ticket_id in candidates:
                with engine.begin() as conn:
                    won = conn.execute(
                        T.update().where(T.c.ticket_id == ticket_id).where(due).values(notify_lease_until=until)
                    ).rowcount
                    if won == 1:
                        claimed.append(_ticket(conn.execute(sa.select(T).where(T.c.ticket_id == ticket_id)).one()))
        return claimed

    def mark_notified(self, ticket_id: str, now: dt.datetime | None = None) -> None:
        moment = _db_time(now)
        engine = self._registry.engine
        with self._registry.db_errors(), engine.begin() as conn:
            conn.execute(
                T.update().where(T.c.ticket_id == ticket_id).where(T.c.notified_at.is_(None))
                .values(notified_at=moment, notify_attempts=T.c.notify_attempts + 1,
                        notify_next_at=None, notify_lease_until=None)
            )

    def mark_failed(self, ticket_id: str, now: dt.datetime | None = None) -> dt.datetime | None:
        """Counts a failed post and releases the lease; the ticket is due again after the
        back-off, which is returned (None if the ticket is unknown or notified meanwhile)."""
        moment = _db_time(now)
        engine = self._registry.engine
        with self._registry.db_errors(), engine.begin() as conn:
            attempts = conn.execute(
                sa.select(T.c.notify_attempts).where(T.c.ticket_id == ticket_id)
                .where(T.c.notified_at.is_(None)).with_for_update()
            ).scalar()
            if attempts is None:
                return None
            failures = int(attempts) + 1
            next_at = moment + backoff(failures)
            conn.execute(
                T.update().where(T.c.ticket_id == ticket_id).where(T.c.notified_at.is_(None))
                .values(notify_attempts=failures, notify_next_at=next_at, notify_lease_until=None)
            )
        logger.warning("Notification of callback ticket %s failed %s times; next try in %s",
                       ticket_id, failures, backoff(failures))
        return _as_utc(next_at)
