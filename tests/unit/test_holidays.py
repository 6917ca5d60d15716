"""The hand-typed holiday schedule the action and end-to-end tests take their expected dates
from (tests/support/holidays.py): checked against the notices and hand-counted dates, and the
bot's own calendar (actions/policy.py, chinese_calendar) checked against it, day by day."""
import datetime as dt

import chinese_calendar
import pytest

from actions import policy as pol
from tests.support import holidays
from tests.support.holidays import Day

D = dt.date


def test_the_schedule_says_what_the_notices_say() -> None:
    # The notices name the weekday of each period's first and last day and of each make-up day.
    assert [D(2026, 1, 1).weekday(), D(2026, 1, 4).weekday()] == [3, 6]  # 元旦 from Thursday; Sunday worked
    assert [D(2026, 2, 15).weekday(), D(2026, 2, 23).weekday()] == [6, 0]  # 春节 Sunday to Monday
    assert [D(2026, 2, 14).weekday(), D(2026, 2, 28).weekday()] == [5, 5]  # both Saturdays worked
    assert [D(2026, 5, 1).weekday(), D(2026, 5, 5).weekday(), D(2026, 5, 9).weekday()] == [4, 1, 5]
    assert [D(2026, 9, 25).weekday(), D(2026, 9, 27).weekday()] == [4, 6]  # 中秋节 Friday to Sunday
    assert [D(2026, 10, 1).weekday(), D(2026, 10, 7).weekday()] == [3, 2]  # 国庆节 Thursday to Wednesday
    assert [D(2026, 9, 20).weekday(), D(2026, 10, 10).weekday()] == [6, 5]
    off_2026, on_2026 = holidays.SCHEDULES[2026]
    assert len(off_2026) == 3 + 9 + 3 + 5 + 3 + 3 + 7
    assert all(day.weekday() >= 5 for day in on_2026)
    off_2025, on_2025 = holidays.SCHEDULES[2025]
    assert len(off_2025) == 1 + 8 + 3 + 5 + 3 + 8
    assert all(day.weekday() >= 5 for day in on_2025)


@pytest.mark.parametrize(("requested", "completes"), [
    # 09-28..30, 10-08, 10-09, 10-10 (make-up Saturday), 10-12..16, 10-19..22: the 15th is 10-22.
    (D(2026, 9, 24), Day(D(2026, 10, 22), False)),
    # 09-30, 10-08, 10-09, 10-10, 10-12..16, 10-19..23, 10-26: the 15th is 10-26.
    (D(2026, 9, 29), Day(D(2026, 10, 26), False)),
    (D(2026, 9, 30), Day(D(2026, 10, 27), False)),
    # 10-12..16, 10-19..23, 10-26..30.
    (D(2026, 10, 10), Day(D(2026, 10, 30), False)),
    # 12-04, 12-07..11, 12-14..18, 12-21..24.
    (D(2026, 12, 3), Day(D(2026, 12, 24), False)),
    # 12-22..25, 12-28..31, then 2027 (unpublished, Monday to Friday): 01-01, 01-04..08, 01-11.
    (D(2026, 12, 21), Day(D(2027, 1, 11), True)),
    # 09-28 (make-up Sunday), 09-29, 09-30, 10-09, 10-10, 10-11 (make-up Saturday), 10-13..17, 10-20..23.
    (D(2025, 9, 26), Day(D(2025, 10, 23), False)),
    # 12-31, then 2026: 01-04 (make-up Sunday), 01-05..09, 01-12..16, 01-19..21.
    (D(2025, 12, 30), Day(D(2026, 1, 21), False)),
])
def test_hand_counted_completion_dates(requested: dt.date, completes: Day) -> None:
    assert holidays.completes_on(requested) == completes


def test_hand_counted_working_days_before() -> None:
    # 09-29, 09-28, then 09-25..27 off: the 3rd is Thursday 09-24.
    assert holidays.working_days_before(D(2026, 9, 30), 3) == Day(D(2026, 9, 24), False)
    assert holidays.working_days_before(D(2026, 10, 12), 1) == Day(D(2026, 10, 10), False)
    assert holidays.working_days_before(D(2026, 12, 3), 3) == Day(D(2026, 11, 30), False)


@pytest.mark.parametrize("year", sorted(holidays.SCHEDULES))
def test_the_calendar_package_agrees_with_the_notices(year: int) -> None:
    day, wrong = D(year, 1, 1), []
    while day.year == year:
        if chinese_calendar.is_workday(day) != holidays.is_working_day(day)[0]:
            wrong.append(day)
        day += dt.timedelta(days=1)
    assert wrong == []


def test_the_bot_counts_working_days_as_the_notices_do() -> None:
    """Every day from 2025 to 2027 as a request day: the completion date the bot tells, and
    the demo's "3 working days ago", are the ones the notices give."""
    day, wrong = D(2025, 1, 10), []
    while day < D(2027, 12, 1):  # walks that stay inside the years the table knows
        got = pol.completion_date(day)
        if (got.date, got.is_estimate) != holidays.completes_on(day):
            wrong.append(("completes", day))
        before = pol.working_days_before(day, 3)
        if (before.date, before.is_estimate) != holidays.working_days_before(day, 3):
            wrong.append(("before", day))
        day += dt.timedelta(days=1)
    assert wrong == []
