"""Tells the support team about new callback tickets in their 企业微信 (WeCom) group, through the
group robot's webhook (WECOM_WEBHOOK_URL, `https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=KEY`).

The protocol: POST the URL with the JSON body {"msgtype": "markdown", "markdown": {"content":
...}}, the content at most 4096 bytes of UTF-8; the robot answers {"errcode": 0, "errmsg": "ok"},
or a non-zero errcode (45009: over its 20 messages a minute; 93000: an invalid key; 40058: the
content too long). The URL's key is a secret: it is never logged.

Delivery is at least once and never loses a ticket: the ticket row is the outbox (actions/
tickets.py). `NotificationLoop`, started by the action server, claims due tickets one at a time
(a lease longer than a post's timeout, so a second action server does not post it too), posts,
and marks each delivered or failed (then retried with back-off). A post that reached the robot
but whose answer was lost is posted again. Without WECOM_WEBHOOK_URL nothing is posted; tickets
are kept and the team finds them with `make tickets`. The loop also deletes the phone numbers
of tickets closed longer than the retention period, now and then.

What the post carries: the ticket number, the topic, the channel, the masked phone number,
the terminal if any and the time (Beijing). Never the full phone number, nor the conversation id.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp

from actions.config import get_settings
from actions.registry import RegistryError
from actions.tickets import BEIJING, Ticket, TicketStore, mask_long_numbers, one_line

logger = logging.getLogger(__name__)

MAX_CONTENT_BYTES = 4096
DEFAULT_TIMEOUT_SECONDS = 5.0
MAX_POSTS_PER_ROUND = 10  # the robot takes 20 messages a minute
PURGE_EVERY_SECONDS = 3600.0
ELLIPSIS = "…"
CHANNEL_NAMES = {"socketio": "网页", "rest": "接口", "wechat": "微信公众号"}
# Characters the robot's markdown would read as markup (bold, code, links, <@userid> mentions,
# <font> tags, headings, quotes), replaced by their full-width forms in merchants' text.
_MARKUP = str.maketrans({"*": "＊", "`": "｀", "[": "［", "]": "］", "<": "＜", ">": "＞", "#": "＃"})


def beijing_time(moment: dt.datetime) -> str:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.timezone.utc)
    return aware.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M")


def channel_name(channel: str) -> str:
    return CHANNEL_NAMES.get(channel, one_line(channel).translate(_MARKUP) or "未知")


def truncate_utf8(text: str, limit: int, marker: str = ELLIPSIS) -> str:
    """The text if it is at most `limit` bytes of UTF-8, else its longest prefix of whole
    characters that fits with the marker."""
    if len(text.encode("utf-8")) <= limit:
        return text
    room = max(0, limit - len(marker.encode("utf-8")))
    return text.encode("utf-8")[:room].decode("utf-8", errors="ignore") + marker


def _plain(text: str) -> str:
    """Merchant-typed text as one line of the robot's markdown: no markup, long numbers masked."""
    return mask_long_numbers(one_line(text)).translate(_MARKUP)


def markdown(ticket: Ticket) -> str:
    """The robot message for a new ticket, at most MAX_CONTENT_BYTES; a long topic is cut."""
    lines = [
        "## 新回电工单",
        f"> 单号：{ticket.ticket_id}",
        f"> 渠道：{channel_name(ticket.channel)}",
        f"> 手机：`{one_line(ticket.phone_masked).replace('`', '')}`",  # code: its **** is not markup
    ]
    if ticket.terminal_id:
        lines.append(f"> 终端：{_plain(ticket.terminal_id)}")
    lines.append(f"> 时间：{beijing_time(ticket.created_at)}（北京时间）")
    head = "\n".join(lines) + "\n> 问题："
    room = MAX_CONTENT_BYTES - len(head.encode("utf-8"))
    return truncate_utf8(head + truncate_utf8(_plain(ticket.topic), max(room, 0)), MAX_CONTENT_BYTES)


def _url_secrets(url: str) -> list[str]:
    """The parts of the webhook URL that must never reach a log: its query values (the key)."""
    return [value for _, value in parse_qsl(urlsplit(url).query) if value]


class WeComNotifier:
    """Posts to one WeCom group robot."""

    def __init__(self, url: str, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        if not url:
            raise ValueError("a WeCom notifier needs the robot's webhook URL")
        self._url = url
        self._secrets = _url_secrets(url)
        self.timeout_seconds = timeout_seconds

    @property
    def lease_seconds(self) -> float:
        """How long a claimed ticket stays ours: well beyond one post's timeout."""
        return max(30.0, 3 * self.timeout_seconds)

    def _scrub(self, text: Any) -> str:
        scrubbed = one_line(text)[:200]
        for secret in self._secrets:
            scrubbed = scrubbed.replace(secret, "***")
        return scrubbed

    async def post(self, content: str) -> bool:
        """Posts a markdown message; True only for HTTP 200 with errcode 0."""
        body = {"msgtype": "markdown", "markdown": {"content": truncate_utf8(content, MAX_CONTENT_BYTES)}}
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(
                    self._url, data=data, headers={"Content-Type": "application/json; charset=utf-8"}
                ) as response:
                    if response.status != 200:
                        logger.warning("WeCom robot answered HTTP %s", response.status)
                        return False
                    answer = json.loads(await response.read())
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, UnicodeDecodeError) as error:
            logger.warning("WeCom robot unreachable: %s", type(error).__name__)
            return False
        errcode = answer.get("errcode") if isinstance(answer, dict) else None
        if errcode != 0:
            errmsg = answer.get("errmsg") if isinstance(answer, dict) else answer
            logger.warning("WeCom robot refused the message: errcode %s, %s", errcode, self._scrub(errmsg))
            return False
        return True

    async def deliver_due(self, store: TicketStore, now: dt.datetime | None = None,
                          limit: int = MAX_POSTS_PER_ROUND) -> int:
        """Posts the tickets due now, one claim at a time; stops at the first failure (the
        robot is down or rate-limited: the rest wait for the next round). How many were
        delivered. Database errors propagate (nothing is lost: claims expire)."""
        delivered = 0
        for _ in range(limit):
            claimed = await asyncio.to_thread(store.claim_due, now, 1, self.lease_seconds)
            if not claimed:
                break
            ticket = claimed[0]
            if await self.post(markdown(ticket)):
                await asyncio.to_thread(store.mark_notified, ticket.ticket_id, now)
                delivered += 1
                logger.info("Callback ticket %s posted to the support group", ticket.ticket_id)
            else:
                await asyncio.to_thread(store.mark_failed, ticket.ticket_id, now)
                break
        return delivered


_running: NotificationLoop | None = None


def kick() -> None:
    """Wakes the action server's notification loop now (after a ticket is created); a no-op
    where none runs. Safe from any thread."""
    loop = _running
    if loop is not None:
        loop.kick()


class NotificationLoop:
    """Every `poll_seconds` (WECOM_POLL_SECONDS), or at once when kicked: posts due tickets,
    and deletes expired phone numbers at most every `purge_every_seconds`. Never stops on an
    error; logs it (once per run of failures) and tries again next round."""

    def __init__(
        self,
        store: TicketStore | None = None,
        notifier: WeComNotifier | None = None,
        poll_seconds: float | None = None,
        purge_every_seconds: float = PURGE_EVERY_SECONDS,
    ) -> None:
        settings = get_settings()
        self._store = store
        if notifier is None and settings.wecom_webhook_url:
            notifier = WeComNotifier(settings.wecom_webhook_url)
        self.notifier = notifier
        self.poll_seconds = poll_seconds if poll_seconds is not None else settings.wecom_poll_seconds
        self.purge_every_seconds = purge_every_seconds
        self._last_purge: float | None = None
        self._failing = False
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    @property
    def store(self) -> TicketStore:
        if self._store is None:
            self._store = TicketStore()
        return self._store

    def start(self) -> None:
        """Starts the loop on the running event loop."""
        global _running
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name="callback-ticket-notifications")
        _running = self
        if self.notifier is None:
            logger.info("WECOM_WEBHOOK_URL is not set: callback tickets are kept, the support group is not notified")
        else:
            logger.info("Callback tickets are posted to the support group's WeCom robot")

    async def stop(self) -> None:
        global _running
        if _running is self:
            _running = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def kick(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    async def run_once(self, now: dt.datetime | None = None) -> int:
        """One round: the purge if it is due, then the posts. How many were delivered."""
        clock = time.monotonic()
        if self._last_purge is None or clock - self._last_purge >= self.purge_every_seconds:
            await asyncio.to_thread(self.store.purge_phones, now)
            self._last_purge = clock
        if self.notifier is None:
            return 0
        return await self.notifier.deliver_due(self.store, now)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await self.run_once()
                if self._failing:
                    logger.info("Callback ticket notifications work again")
                self._failing = False
            except asyncio.CancelledError:
                raise
            except RegistryError as error:
                self._log_failure("Callback ticket notifications paused: the registry failed (%s)",
                                  type(error).__name__)
            except Exception:  # the loop must outlive any bug in a round
                self._log_failure("Callback ticket notifications: a round failed", exc_info=True)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def _log_failure(self, message: str, *args: Any, exc_info: bool = False) -> None:
        level = logging.DEBUG if self._failing else logging.WARNING
        logger.log(level, message, *args, exc_info=exc_info)
        self._failing = True
