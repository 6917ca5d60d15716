"""Policy rules: dormancy, automatic deregistration, fees, deposits and Chinese working days."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import chinese_calendar
import pytest

from actions import policy as pol
from actions.policy import Policy, TerminalState

DOMAIN_YML = """\
version: "3.1"
slots:
  terminal_id:
    type: text
    mappings:
      - type: from_entity
        entity: terminal_id
  policy_dormant_months:
    type: text
    initial_value: "3"
    influence_conversation: false
    mappings:
      - type: custom
  policy_auto_deregister_months:
    type: text
    initial_value: "6"
    influence_conversation: false
    mappings:
      - type: custom
  policy_deregistration_working_days:
    type: text
    initial_value: "15"
    influence_conversation: false
    mappings:
      - type: custom
"""

T = dt.date(2026, 6, 10)


@pytest.fixture()
def domain_file(tmp_path: Path) -> Path:
    path = tmp_path / "domain.yml"
    path.write_text(DOMAIN_YML, encoding="utf-8")
    return path


@pytest.fixture()
def policy(domain_file: Path) -> Policy:
    return pol.load_policy(domain_file)


def days_ago(n: int) -> dt.date:
    return T - dt.timedelta(days=n)


def test_load_policy_reads_the_domain_slots(policy: Policy) -> None:
    assert policy == Policy(dormant_months=3, auto_deregister_months=6, deregistration_working_days=15)
    assert policy.dormant_after_days == 90
    assert policy.auto_deregister_after_days == 180


def test_load_policy_is_cached(domain_file: Path) -> None:
    assert pol.load_policy(domain_file) is pol.load_policy(str(domain_file))


def test_load_policy_reads_a_split_domain_directory(tmp_path: Path) -> None:
    (tmp_path / "domain").mkdir()
    (tmp_path / "domain" / "policy.yml").write_text(DOMAIN_YML, encoding="utf-8")
    (tmp_path / "domain" / "other.yml").write_text('version: "3.1"\nintents: [greet]\n', encoding="utf-8")
    assert pol.load_policy(tmp_path / "domain").deregistration_working_days == 15


@pytest.mark.parametrize(
    "text",
    [
        DOMAIN_YML.replace('initial_value: "15"', 'initial_value: "abc"'),
        DOMAIN_YML.replace('initial_value: "6"', 'initial_value: "0"'),
        DOMAIN_YML.replace("policy_dormant_months", "something_else"),
    ],
)
def test_load_policy_rejects_missing_or_invalid_numbers(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(pol.PolicyError):
        pol.load_policy(path)


def test_load_policy_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(pol.PolicyError):
        pol.load_policy(tmp_path / "missing.yml")


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        (0, TerminalState.ACTIVE),
        (89, TerminalState.ACTIVE),
        (90, TerminalState.DORMANT),
        (179, TerminalState.DORMANT),
        (180, TerminalState.AUTO_DEREGISTERED),
        (400, TerminalState.AUTO_DEREGISTERED),
    ],
)
def test_state_boundaries(policy: Policy, days: int, expected: TerminalState) -> None:
    assert pol.terminal_state(days_ago(days), None, False, T, policy) is expected


def test_contract_example_k7306118(policy: Policy) -> None:
    last_tx = days_ago(100)
    assert pol.terminal_state(last_tx, None, False, T, policy) is TerminalState.DORMANT
    assert pol.dormant_since(last_tx, policy) == T - dt.timedelta(days=10)
    assert (pol.auto_deregister_on(last_tx, policy) - T).days == 80


def test_requests_take_precedence_over_dormancy(policy: Policy) -> None:
    old = days_ago(300)
    assert pol.terminal_state(old, None, True, T, policy) is TerminalState.DEREGISTERED
    assert pol.terminal_state(old, T + dt.timedelta(days=1), False, T, policy) is (
        TerminalState.DEREGISTRATION_IN_PROGRESS
    )
    assert pol.terminal_state(old, T, False, T, policy) is TerminalState.DEREGISTERED
    assert pol.terminal_state(days_ago(1), T - dt.timedelta(days=1), False, T, policy) is (
        TerminalState.DEREGISTERED
    )


@pytest.mark.parametrize(("offset", "expected"), [(-1, 200), (0, 0), (1, 0)])
def test_termination_fee_around_the_contract_end(offset: int, expected: int) -> None:
    contract_ends = dt.date(2026, 12, 31)
    assert pol.termination_fee_due(contract_ends, 200, contract_ends + dt.timedelta(days=offset)) == expected


@pytest.mark.parametrize(
    ("state", "refundable"),
    [
        (TerminalState.ACTIVE, False),
        (TerminalState.DORMANT, False),
        (TerminalState.DEREGISTRATION_IN_PROGRESS, False),
        (TerminalState.AUTO_DEREGISTERED, True),
        (TerminalState.DEREGISTERED, True),
    ],
)
def test_deposit_refundable_per_state(state: TerminalState, refundable: bool) -> None:
    assert pol.deposit_refundable(199, False, state) is refundable
    assert pol.deposit_refundable(199, True, state) is False
    assert pol.deposit_refundable(0, False, state) is False


def test_deposit_info() -> None:
    assert pol.deposit_info(299, False, TerminalState.ACTIVE) == pol.DepositInfo(299, False, False, True)
    assert pol.deposit_info(199, False, TerminalState.AUTO_DEREGISTERED) == pol.DepositInfo(199, False, True, True)
    assert pol.deposit_info(299, True, TerminalState.DEREGISTERED) == pol.DepositInfo(299, True, False, False)


def test_calendar_package_covers_2026_but_not_2027() -> None:
    assert chinese_calendar.is_workday(dt.date(2026, 10, 10))  # Saturday, make-up working day
    assert dt.date(2026, 10, 10).weekday() == 5
    assert not chinese_calendar.is_workday(dt.date(2026, 10, 1))
    with pytest.raises(NotImplementedError):
        chinese_calendar.is_workday(dt.date(2027, 1, 4))


def test_request_just_before_national_day_2026(policy: Policy) -> None:
    # 9-30, 10-08, 10-09, 10-10 (make-up Saturday), 10-12..16, 10-19..23, 10-26 is the 15th.
    assert pol.completion_date(dt.date(2026, 9, 29), policy) == pol.WorkingDayResult(dt.date(2026, 10, 26), False)


def test_request_on_a_make_up_saturday_2026(policy: Policy) -> None:
    # 10-12..16, 10-19..23, 10-26..30: the 15th is Friday 10-30.
    assert pol.completion_date(dt.date(2026, 10, 10), policy) == pol.WorkingDayResult(dt.date(2026, 10, 30), False)


def test_request_running_into_an_unpublished_year_is_an_estimate(policy: Policy) -> None:
    # 12-22..25, 12-28..31 are 8 known days; 2027 falls back to Mon-Fri: 01-01, 01-04..08, 01-11.
    assert pol.completion_date(dt.date(2026, 12, 21), policy) == pol.WorkingDayResult(dt.date(2027, 1, 11), True)


def test_working_days_inside_2026_are_not_estimates() -> None:
    assert pol.add_working_days(dt.date(2026, 12, 21), 8) == pol.WorkingDayResult(dt.date(2026, 12, 31), False)
    assert pol.add_working_days(dt.date(2026, 3, 2), 0) == pol.WorkingDayResult(dt.date(2026, 3, 2), False)


def test_working_days_before_skips_holidays() -> None:
    # 09-29, 09-28, then 09-25..27 are the Mid-Autumn holiday, so the 3rd is Thursday 09-24.
    assert pol.working_days_before(dt.date(2026, 9, 30), 3) == pol.WorkingDayResult(dt.date(2026, 9, 24), False)
    # 10-12 (Mon) back: 10-10 is a make-up working Saturday.
    assert pol.working_days_before(dt.date(2026, 10, 12), 1) == pol.WorkingDayResult(dt.date(2026, 10, 10), False)


def test_working_days_before_an_unpublished_year_is_an_estimate() -> None:
    assert pol.working_days_before(dt.date(2003, 1, 6), 1) == pol.WorkingDayResult(dt.date(2003, 1, 3), True)


def test_negative_working_days_are_rejected() -> None:
    with pytest.raises(ValueError):
        pol.add_working_days(dt.date(2026, 1, 5), -1)
