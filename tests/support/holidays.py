"""China's official holiday schedule, typed in by hand from the State Council's notices, so
that tests can name the dates the bot must tell a merchant without asking the code under
test (actions/policy.py and the chinese_calendar package it reads).

The action server reads today's date from the clock and has no setting to pin it, so the
action and end-to-end tests take "today" as it comes and compute the expected dates here.
`tests/unit/test_holidays.py` checks this table against hand-counted dates.

Sources: 国务院办公厅关于2025年部分节假日安排的通知 and 关于2026年部分节假日安排的通知.
2027's schedule is not in the chinese_calendar version the project pins, so for 2027 the bot
assumes Monday to Friday and calls its dates estimates; so does this module.
"""
import datetime as dt
from typing import Dict, NamedTuple, Set, Tuple

from tests.support.servers import POLICY_VALUES

D = dt.date


def _days(first: dt.date, last: dt.date) -> Set[dt.date]:
    return {first + dt.timedelta(days=n) for n in range((last - first).days + 1)}


# Days off (放假) and make-up working days (调休上班), per published year.
SCHEDULES: Dict[int, Tuple[Set[dt.date], Set[dt.date]]] = {
    2025: (
        _days(D(2025, 1, 1), D(2025, 1, 1))  # 元旦
        | _days(D(2025, 1, 28), D(2025, 2, 4))  # 春节
        | _days(D(2025, 4, 4), D(2025, 4, 6))  # 清明节
        | _days(D(2025, 5, 1), D(2025, 5, 5))  # 劳动节
        | _days(D(2025, 5, 31), D(2025, 6, 2))  # 端午节
        | _days(D(2025, 10, 1), D(2025, 10, 8)),  # 国庆节、中秋节
        {D(2025, 1, 26), D(2025, 2, 8), D(2025, 4, 27), D(2025, 9, 28), D(2025, 10, 11)},
    ),
    2026: (
        _days(D(2026, 1, 1), D(2026, 1, 3))  # 元旦
        | _days(D(2026, 2, 15), D(2026, 2, 23))  # 春节
        | _days(D(2026, 4, 4), D(2026, 4, 6))  # 清明节
        | _days(D(2026, 5, 1), D(2026, 5, 5))  # 劳动节
        | _days(D(2026, 6, 19), D(2026, 6, 21))  # 端午节
        | _days(D(2026, 9, 25), D(2026, 9, 27))  # 中秋节
        | _days(D(2026, 10, 1), D(2026, 10, 7)),  # 国庆节
        {D(2026, 1, 4), D(2026, 2, 14), D(2026, 2, 28), D(2026, 5, 9), D(2026, 9, 20), D(2026, 10, 10)},
    ),
}
UNPUBLISHED_YEARS = {2027}


class Day(NamedTuple):
    date: dt.date
    is_estimate: bool


def is_working_day(day: dt.date) -> Tuple[bool, bool]:
    """(whether `day` is a working day, whether that is an estimate)."""
    if day.year in SCHEDULES:
        off, on = SCHEDULES[day.year]
        return day in on or (day.weekday() < 5 and day not in off), False
    if day.year in UNPUBLISHED_YEARS:
        return day.weekday() < 5, True
    raise ValueError(f"{day.year} is not in tests/support/holidays.py: add its official schedule")


def working_days(start: dt.date, n: int, step: int) -> Day:
    """The n-th working day after (step 1) or before (step -1) `start`, which is not counted."""
    day, found, estimate = start, 0, False
    while found < n:
        day += dt.timedelta(days=step)
        working, guessed = is_working_day(day)
        estimate = estimate or guessed
        found += working
    return Day(day, estimate)


def completes_on(requested_on: dt.date) -> Day:
    """The day a deregistration requested on `requested_on` completes (domain.yml's number of
    working days, the article's 15)."""
    return working_days(requested_on, int(POLICY_VALUES["policy_deregistration_working_days"]), 1)


def working_days_before(day: dt.date, n: int) -> Day:
    return working_days(day, n, -1)
