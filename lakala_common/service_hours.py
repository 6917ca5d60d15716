"""When people answer: the support team's service hours, in Beijing time, and the handoff
settings both servers read.

SERVICE_HOURS is `HH:MM-HH:MM` (default 09:00-18:00). SERVICE_DAYS is `workdays` (default:
China's working days, public holidays off and 调休 make-up Saturdays and Sundays on, from
chinese_calendar; Monday to Friday outside the years it has published) or `daily`.
China has one time zone and no daylight saving time, so Beijing time is UTC+8 all year.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import re
from dataclasses import dataclass
from typing import Mapping

import chinese_calendar

from lakala_common.settings import number_from_env

logger = logging.getLogger(__name__)

BEIJING = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
DEFAULT_HOURS = "09:00-18:00"
WORKDAYS = "workdays"
DAILY = "daily"
DAY_MODES = (WORKDAYS, DAILY)
HOURS_RE = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*-\s*([01]?\d|2[0-4]):([0-5]\d)\s*$")
# A paused conversation with nothing happening for this long goes back to the bot.
DEFAULT_HANDOFF_TIMEOUT_MINUTES = 30.0
# Looking further than this for the next opening means the settings leave no opening.
MAX_DAYS_AHEAD = 60


class ServiceHoursError(ValueError):
    """SERVICE_HOURS or SERVICE_DAYS cannot be read."""


def is_service_day(day: dt.date) -> bool:
    try:
        return bool(chinese_calendar.is_workday(day))
    except NotImplementedError:  # a year chinese_calendar has not published yet
        return day.weekday() < 5


@dataclass(frozen=True)
class ServiceHours:
    opens: dt.time
    closes: dt.time
    days: str = WORKDAYS

    @classmethod
    def parse(cls, hours: str = DEFAULT_HOURS, days: str = WORKDAYS) -> ServiceHours:
        match = HOURS_RE.match(hours or "")
        if not match:
            raise ServiceHoursError(f"SERVICE_HOURS must look like 09:00-18:00, not {hours!r}")
        h1, m1, h2, m2 = (int(group) for group in match.groups())
        opens = dt.time(h1, m1)
        closes = dt.time.max if (h2, m2) == (24, 0) else dt.time(h2 % 24, m2)
        if h2 == 24 and m2:
            raise ServiceHoursError("SERVICE_HOURS cannot end after 24:00")
        if closes <= opens:
            raise ServiceHoursError("SERVICE_HOURS must end after it starts, on the same day")
        mode = (days or WORKDAYS).strip().lower()
        if mode not in DAY_MODES:
            raise ServiceHoursError(f"SERVICE_DAYS must be one of {', '.join(DAY_MODES)}")
        return cls(opens, closes, mode)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceHours:
        env = os.environ if environ is None else environ
        return cls.parse(env.get("SERVICE_HOURS", "").strip() or DEFAULT_HOURS,
                         env.get("SERVICE_DAYS", "").strip() or WORKDAYS)

    def _day_open(self, day: dt.date) -> bool:
        return self.days == DAILY or is_service_day(day)

    def is_open(self, now: dt.datetime | None = None) -> bool:
        local = beijing(now)
        return self._day_open(local.date()) and self.opens <= local.time() < self.closes

    def next_open(self, now: dt.datetime | None = None) -> dt.datetime:
        """The next moment (Beijing time) agents are available; `now` itself when open."""
        local = beijing(now)
        if self.is_open(local):
            return local
        day = local.date()
        if local.time() >= self.opens:
            day += dt.timedelta(days=1)
        for _ in range(MAX_DAYS_AHEAD):
            if self._day_open(day):
                return dt.datetime.combine(day, self.opens, BEIJING)
            day += dt.timedelta(days=1)
        raise ServiceHoursError("no service day in the next 60 days")

    @property
    def opens_text(self) -> str:
        return self.opens.strftime("%H:%M")

    @property
    def closes_text(self) -> str:
        return "24:00" if self.closes == dt.time.max else self.closes.strftime("%H:%M")


def beijing(now: dt.datetime | None = None) -> dt.datetime:
    """`now` (aware, or naive UTC) in Beijing time; the current time by default."""
    if now is None:
        return dt.datetime.now(BEIJING)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.timezone.utc)
    return now.astimezone(BEIJING)


def wechat_handoff_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """WECHAT_HANDOFF=1: the 公众号 has WeChat's customer-service function (客服功能) and a
    merchant who asks for a person is transferred to its agents. Off by default."""
    env = os.environ if environ is None else environ
    return env.get("WECHAT_HANDOFF", "").strip().lower() in ("1", "true", "yes", "on")


def handoff_timeout_seconds(environ: Mapping[str, str] | None = None) -> float:
    """HANDOFF_TIMEOUT_MINUTES: a paused conversation idle this long goes back to the bot."""
    return 60.0 * number_from_env("HANDOFF_TIMEOUT_MINUTES", DEFAULT_HANDOFF_TIMEOUT_MINUTES, environ=environ)
