"""Deregistration policy from the article: dormancy, automatic deregistration, fees, deposits, working days.

The policy numbers are read from the slots' initial values in domain.yml, their single home.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

import chinese_calendar
import yaml

from actions.config import get_settings

DAYS_PER_MONTH = 30

POLICY_SLOTS = {
    "dormant_months": "policy_dormant_months",
    "auto_deregister_months": "policy_auto_deregister_months",
    "deregistration_working_days": "policy_deregistration_working_days",
}


class PolicyError(ValueError):
    """The policy numbers are missing from, or invalid in, the domain."""


@dataclass(frozen=True)
class Policy:
    dormant_months: int
    auto_deregister_months: int
    deregistration_working_days: int

    @property
    def dormant_after_days(self) -> int:
        return self.dormant_months * DAYS_PER_MONTH

    @property
    def auto_deregister_after_days(self) -> int:
        return self.auto_deregister_months * DAYS_PER_MONTH


class TerminalState(str, Enum):
    ACTIVE = "active"
    DORMANT = "dormant"
    AUTO_DEREGISTERED = "auto_deregistered"
    DEREGISTRATION_IN_PROGRESS = "deregistration_in_progress"
    DEREGISTERED = "deregistered"

    @property
    def is_deregistered(self) -> bool:
        return self in (TerminalState.AUTO_DEREGISTERED, TerminalState.DEREGISTERED)


@dataclass(frozen=True)
class DepositInfo:
    amount: int
    refunded: bool
    refundable_now: bool
    refundable_after_deregistration: bool


@dataclass(frozen=True)
class WorkingDayResult:
    date: dt.date
    is_estimate: bool


# --- policy numbers ---------------------------------------------------------------------------


def _domain_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".yml", ".yaml"))
    return [path]


def _read_slots(path: Path) -> dict[str, Any]:
    slots: dict[str, Any] = {}
    for file in _domain_files(path):
        try:
            content = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PolicyError(f"cannot read policy from {file}: {exc}") from exc
        if isinstance(content, Mapping) and isinstance(content.get("slots"), Mapping):
            slots.update(content["slots"])
    return slots


def _positive_int(slots: Mapping[str, Any], slot_name: str) -> int:
    slot = slots.get(slot_name)
    raw = slot.get("initial_value") if isinstance(slot, Mapping) else None
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = 0
    if value <= 0:
        raise PolicyError(f"slot {slot_name!r} needs a positive integer initial_value, got {raw!r}")
    return value


@functools.lru_cache(maxsize=8)
def _load_policy_cached(path: str) -> Policy:
    slots = _read_slots(Path(path))
    return Policy(**{field: _positive_int(slots, slot) for field, slot in POLICY_SLOTS.items()})


def default_domain_path() -> Path:
    settings = get_settings()
    split_domain = settings.repo_root / "domain"
    if not settings.domain_path.exists() and split_domain.is_dir():
        return split_domain
    return settings.domain_path


def load_policy(domain_path: str | Path | None = None) -> Policy:
    """The policy from domain.yml (or a split domain/ directory); cached per path."""
    path = Path(domain_path) if domain_path is not None else default_domain_path()
    return _load_policy_cached(str(path.resolve()))


def _policy(policy: Policy | None) -> Policy:
    return policy if policy is not None else load_policy()


# --- terminal state -----------------------------------------------------------------------------


def dormant_since(last_tx: dt.date, policy: Policy | None = None) -> dt.date:
    return last_tx + dt.timedelta(days=_policy(policy).dormant_after_days)


def auto_deregister_on(last_tx: dt.date, policy: Policy | None = None) -> dt.date:
    return last_tx + dt.timedelta(days=_policy(policy).auto_deregister_after_days)


def terminal_state(
    last_tx: dt.date,
    pending_completes_on: dt.date | None,
    completed: bool,
    today: dt.date,
    policy: Policy | None = None,
) -> TerminalState:
    if completed:
        return TerminalState.DEREGISTERED
    if pending_completes_on is not None:
        if pending_completes_on <= today:
            return TerminalState.DEREGISTERED
        return TerminalState.DEREGISTRATION_IN_PROGRESS
    if today >= auto_deregister_on(last_tx, policy):
        return TerminalState.AUTO_DEREGISTERED
    if today >= dormant_since(last_tx, policy):
        return TerminalState.DORMANT
    return TerminalState.ACTIVE


# --- money --------------------------------------------------------------------------------------


def termination_fee_due(contract_ends: dt.date, fee: int, on: dt.date) -> int:
    """The fee is due only strictly before the contract's last day; deregistering on that day is free."""
    return fee if on < contract_ends else 0


def deposit_refundable(deposit_amount: int, deposit_refunded: bool, state: TerminalState) -> bool:
    return deposit_amount > 0 and not deposit_refunded and state.is_deregistered


def deposit_info(deposit_amount: int, deposit_refunded: bool, state: TerminalState) -> DepositInfo:
    return DepositInfo(
        amount=deposit_amount,
        refunded=deposit_refunded,
        refundable_now=deposit_refundable(deposit_amount, deposit_refunded, state),
        refundable_after_deregistration=deposit_amount > 0 and not deposit_refunded,
    )


# --- working days -------------------------------------------------------------------------------


def is_working_day(day: dt.date) -> tuple[bool, bool]:
    """(is a working day, is an estimate): outside the published years, Monday-Friday is assumed."""
    try:
        return chinese_calendar.is_workday(day), False
    except NotImplementedError:
        return day.weekday() < 5, True


def _walk_working_days(start: dt.date, n: int, step: int) -> WorkingDayResult:
    if n < 0:
        raise ValueError("n must not be negative")
    day, found, estimate = start, 0, False
    while found < n:
        day += dt.timedelta(days=step)
        working, guessed = is_working_day(day)
        estimate = estimate or guessed
        if working:
            found += 1
    return WorkingDayResult(date=day, is_estimate=estimate)


def add_working_days(start: dt.date, n: int) -> WorkingDayResult:
    """The n-th Chinese working day after start (start itself not counted)."""
    return _walk_working_days(start, n, 1)


def working_days_before(day: dt.date, n: int) -> WorkingDayResult:
    """The n-th Chinese working day before day (day itself not counted)."""
    return _walk_working_days(day, n, -1)


def completion_date(requested_on: dt.date, policy: Policy | None = None) -> WorkingDayResult:
    return add_working_days(requested_on, _policy(policy).deregistration_working_days)


__all__: list[str] = [
    "DepositInfo",
    "Policy",
    "PolicyError",
    "TerminalState",
    "WorkingDayResult",
    "add_working_days",
    "auto_deregister_on",
    "completion_date",
    "deposit_info",
    "deposit_refundable",
    "dormant_since",
    "is_working_day",
    "load_policy",
    "terminal_state",
    "termination_fee_due",
    "working_days_before",
]
