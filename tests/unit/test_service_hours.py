"""Service hours: when agents answer, in Beijing time, with China's working days."""
import datetime as dt

import pytest

from lakala_common.service_hours import (
    BEIJING,
    ServiceHours,
    ServiceHoursError,
    handoff_timeout_seconds,
    wechat_handoff_enabled,
)


def beijing(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=BEIJING)


def test_defaults_are_working_days_nine_to_six() -> None:
    hours = ServiceHours.from_env({})
    assert (hours.opens_text, hours.closes_text, hours.days) == ("09:00", "18:00", "workdays")


def test_open_within_the_hours_of_a_working_day_only() -> None:
    hours = ServiceHours.parse("09:00-18:00")
    assert hours.is_open(beijing(2025, 3, 5, 9, 0))  # a Wednesday
    assert not hours.is_open(beijing(2025, 3, 5, 8, 59))
    assert not hours.is_open(beijing(2025, 3, 5, 18, 0))
    assert not hours.is_open(beijing(2025, 3, 8, 10, 0))  # a Saturday


def test_holidays_are_closed_and_make_up_days_are_open() -> None:
    hours = ServiceHours.parse("09:00-18:00")
    assert not hours.is_open(beijing(2025, 10, 1, 10, 0))  # National Day
    assert hours.is_open(beijing(2025, 9, 28, 10, 0))  # Sunday, a 调休 working day
    # After National Day's last afternoon the next opening is the first working day after the holiday.
    assert hours.next_open(beijing(2025, 9, 30, 19, 0)) == beijing(2025, 10, 9, 9, 0)


def test_utc_times_are_read_in_beijing_time() -> None:
    hours = ServiceHours.parse("09:00-18:00", "daily")
    assert hours.is_open(dt.datetime(2025, 3, 5, 1, 30, tzinfo=dt.timezone.utc))  # 09:30 in Beijing
    assert not hours.is_open(dt.datetime(2025, 3, 5, 10, 30))  # naive means UTC: 18:30 in Beijing


def test_next_open_is_now_when_open_and_the_next_morning_after_closing() -> None:
    hours = ServiceHours.parse("09:00-18:00", "daily")
    now = beijing(2025, 3, 5, 12, 0)
    assert hours.next_open(now) == now
    assert hours.next_open(beijing(2025, 3, 5, 7, 0)) == beijing(2025, 3, 5, 9, 0)
    assert hours.next_open(beijing(2025, 3, 5, 20, 0)) == beijing(2025, 3, 6, 9, 0)


def test_round_the_clock() -> None:
    hours = ServiceHours.parse("00:00-24:00", "daily")
    assert hours.is_open(beijing(2025, 10, 1, 23, 59)) and hours.closes_text == "24:00"


@pytest.mark.parametrize("hours, days", [
    ("9-18", "workdays"), ("18:00-09:00", "workdays"), ("09:00-09:00", "daily"), ("25:00-26:00", "daily"),
    ("09:00-18:00", "weekends"), ("x", "daily"),
])
def test_settings_that_cannot_work_are_refused(hours: str, days: str) -> None:
    with pytest.raises(ServiceHoursError):
        ServiceHours.parse(hours, days)


def test_wechat_handoff_is_off_unless_turned_on() -> None:
    assert not wechat_handoff_enabled({})
    assert not wechat_handoff_enabled({"WECHAT_HANDOFF": "0"})
    assert wechat_handoff_enabled({"WECHAT_HANDOFF": "1"})


def test_handoff_timeout_in_minutes() -> None:
    assert handoff_timeout_seconds({}) == 1800
    assert handoff_timeout_seconds({"HANDOFF_TIMEOUT_MINUTES": "2"}) == 120
    assert handoff_timeout_seconds({"HANDOFF_TIMEOUT_MINUTES": "-1"}) == 1800
