"""`make tickets`: the support team's view of callback tickets.

    python -m actions.tickets_cli [list]              open tickets, oldest first
    python -m actions.tickets_cli show HJ...          one ticket with its full phone number and
                                                      the conversation's transcript
    python -m actions.tickets_cli close HJ... --note "已回电，问题已解决"
    python -m actions.tickets_cli purge               delete the phone numbers of tickets closed
                                                      longer than TICKET_PHONE_RETENTION_DAYS

Every call first does what `purge` does. The tickets are in the registry (TERMINAL_DB_URL); the
transcript is read from the tracker store (TRACKER_DB_URL, Rasa's `events` table). Phone numbers
are masked everywhere except the ticket's own number in `show`, which the agent must call;
in transcripts 11-digit numbers and runs of 4 to 7 digits (phone tails) become ****, terminal
numbers (8 letters or digits) stay readable. Anything typed by a merchant is printed on one line
without control characters, so it cannot move the cursor or recolour the agent's terminal.

Exit codes: 0 done; 1 no such ticket, already closed, or invalid input; 2 usage, or the
database cannot be reached.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from actions.config import get_settings
from actions.notify import beijing_time, channel_name
from actions.registry import RegistryError, RegistryUnavailable
from actions.tickets import BEIJING, Ticket, TicketClosed, TicketNotFound, TicketStore, one_line
from lakala_common import log_masking

EXIT_OK, EXIT_INVALID, EXIT_UNAVAILABLE = 0, 1, 2
TRANSCRIPT_MAX_MESSAGES = 200
TOPIC_COLUMNS = 40
TRACKER_TIMEOUT_SECONDS = 5

EVENTS = sa.table(
    "events",
    sa.column("id"),
    sa.column("sender_id"),
    sa.column("type_name"),
    sa.column("timestamp"),
    sa.column("data"),
)

# --- masking transcripts -----------------------------------------------------------------------

_DIGIT = "[0-9０-９]"
_DIGIT_RUN = re.compile(rf"(?<!{_DIGIT}){_DIGIT}(?:[ \u3000\-－]?{_DIGIT})*")
_ALNUM = "0-9A-Za-z０-９Ａ-Ｚａ-ｚ"
_TERMINAL = re.compile(rf"(?<![{_ALNUM}])[{_ALNUM}]{{8}}(?![{_ALNUM}])")


def _digit_count(run: str) -> int:
    return sum(1 for char in run if unicodedata.decimal(char, None) is not None)


def mask_transcript(text: str) -> str:
    """Phone numbers and tails out of a transcript line: a run of digits (a space or dash
    allowed between them) becomes **** unless it is shorter than 4 digits, exactly 8, or part
    of an 8-character terminal number."""
    protected = [match.span() for match in _TERMINAL.finditer(text)]

    def replace(match: re.Match) -> str:
        start, end = match.span()
        if any(a <= start and end <= b for a, b in protected):
            return match.group()
        count = _digit_count(match.group())
        return match.group() if count < 4 or count == 8 else log_masking.MASK

    return _DIGIT_RUN.sub(replace, text)


# --- output --------------------------------------------------------------------------------------


def width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def fit(text: str, columns: int) -> str:
    """Cut to `columns` display columns (CJK characters count two) with an ellipsis, padded to
    exactly that many."""
    if width(text) <= columns:
        return text + " " * (columns - width(text))
    out, used = [], 0
    for char in text:
        if used + width(char) > columns - 1:
            break
        out.append(char)
        used += width(char)
    return "".join(out) + "…" + " " * (columns - used - 1)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(width(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(fit(cell, widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def _moment(value: dt.datetime | None) -> str:
    return beijing_time(value) if value is not None else "—"


def _yes_no(ticket: Ticket) -> str:
    return "是" if ticket.notified_at is not None else "否"


def print_list(tickets: list[Ticket], out: Any) -> None:
    if not tickets:
        print("没有未关闭的回电工单。", file=out)
        return
    print(f"未关闭的回电工单：{len(tickets)} 张（北京时间；手机号已打码，完整号码见 show 单号）", file=out)
    rows = [["单号", "创建时间", "渠道", "手机", "终端", "已通知", "问题"]]
    for ticket in tickets:
        rows.append([
            ticket.ticket_id, _moment(ticket.created_at), channel_name(ticket.channel), ticket.phone_masked,
            ticket.terminal_id or "—", _yes_no(ticket), fit(one_line(ticket.topic), TOPIC_COLUMNS).rstrip(),
        ])
    for line in _table(rows):
        print(line, file=out)


def print_ticket(ticket: Ticket, phone: str | None, out: Any) -> None:
    status = "未关闭" if ticket.is_open else "已关闭"
    if phone:
        phone_line = f"{phone}（请回电）" if ticket.is_open else phone
    else:
        phone_line = f"{ticket.phone_masked}（完整号码已按保留期删除）"
    if ticket.notified_at is not None:
        notified = f"已通知客服群 {_moment(ticket.notified_at)}"
    elif ticket.notify_attempts:
        notified = f"未送达（已尝试 {ticket.notify_attempts} 次，仍在重试）" if ticket.is_open else "未送达"
    else:
        notified = "未通知"
    lines = [
        f"回电工单 {ticket.ticket_id}（{status}）",
        f"  创建时间：{_moment(ticket.created_at)}（北京时间）",
        f"  渠道：{channel_name(ticket.channel)}",
        f"  手机：{phone_line}",
        f"  终端：{ticket.terminal_id or '无'}",
        f"  问题：{one_line(ticket.topic)}",
        f"  通知：{notified}",
        f"  会话：{mask_transcript(one_line(ticket.conversation))}",
    ]
    if not ticket.is_open:
        lines.append(f"  关闭时间：{_moment(ticket.closed_at)}")
        for index, note_line in enumerate((ticket.close_note or "").splitlines() or [""]):
            lines.append(f"  {'关闭备注：' if index == 0 else '　　　　　'}{one_line(note_line)}")
    for line in lines:
        print(line, file=out)


# --- the transcript ------------------------------------------------------------------------------


def _check_tracker(url: str) -> str | None:
    """Why the URL holds no readable tracker store, or None."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        return "TRACKER_DB_URL 不是数据库地址"
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            return "对话库文件不存在（TRACKER_DB_URL）"
    return None


def _tracker_engine(url: str) -> sa.engine.Engine:
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        connect_args = {"timeout": TRACKER_TIMEOUT_SECONDS}
    elif parsed.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": TRACKER_TIMEOUT_SECONDS}
    return sa.create_engine(url, future=True, connect_args=connect_args)


def transcript(url: str, conversation: str, limit: int = TRANSCRIPT_MAX_MESSAGES) -> tuple[list[str], bool]:
    """(lines, cut): the conversation's last `limit` user and bot messages, masked, oldest first;
    cut when there were more."""
    engine = _tracker_engine(url)
    query = (
        sa.select(EVENTS.c.type_name, EVENTS.c.timestamp, EVENTS.c.data)
        .where(EVENTS.c.sender_id == conversation)
        .where(EVENTS.c.type_name.in_(("user", "bot")))
        .order_by(EVENTS.c.timestamp.desc(), EVENTS.c.id.desc())
        .limit(limit + 1)
    )
    try:
        with engine.connect() as conn:
            rows = list(conn.execute(query))
    finally:
        engine.dispose()
    cut = len(rows) > limit
    lines = []
    for kind, timestamp, data in reversed(rows[:limit]):
        line = _message_line(kind, timestamp, data)
        if line:
            lines.append(line)
    return lines, cut


def _message_line(kind: str, timestamp: Any, data: Any) -> str | None:
    try:
        event = json.loads(data) if isinstance(data, str | bytes) else dict(data or {})
    except (TypeError, ValueError):
        return None
    if not isinstance(event, dict):
        return None
    text = one_line(event.get("text"))
    if kind == "bot":
        buttons = (event.get("data") or {}).get("buttons") if isinstance(event.get("data"), dict) else None
        titles = [one_line(button.get("title")) for button in buttons or [] if isinstance(button, dict)]
        if titles:
            text = f"{text} [按钮：{' | '.join(title for title in titles if title)}]".strip()
    if not text:
        return None
    try:
        moment = dt.datetime.fromtimestamp(float(timestamp), BEIJING).strftime("%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        moment = "??-?? ??:??:??"
    if kind == "user":
        return f"  {moment} 客户：{mask_transcript(text)}"
    # The bot's own sentences never hold a phone tail or a full number (it shows 138****8000),
    # and its times and ticket numbers should stay readable.
    return f"  {moment} 机器人：{text}"


def print_transcript(conversation: str, out: Any) -> None:
    url = get_settings().tracker_db_url
    problem = _check_tracker(url)
    if problem is None:
        try:
            lines, cut = transcript(url, conversation)
        except sa.exc.SQLAlchemyError as error:
            problem = f"无法读取对话库（{type(error).__name__}）"
    if problem is not None:
        print(f"对话记录：不可用，{problem}", file=out)
        return
    if not lines:
        print("对话记录：无（对话可能已按保留期删除）", file=out)
        return
    heading = "对话记录（北京时间，号码已打码）"
    print(f"{heading}，仅显示最近 {TRANSCRIPT_MAX_MESSAGES} 条：" if cut else f"{heading}：", file=out)
    for line in lines:
        print(line, file=out)


# --- commands ------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m actions.tickets_cli",
        description="回电工单：list 列出未关闭的工单，show 查看一张（含完整手机号和对话记录），"
        "close 关闭（须填备注），purge 删除关闭超过保留期的手机号。",
    )
    commands = p.add_subparsers(dest="command")
    commands.add_parser("list", help="未关闭的工单（默认）")
    show = commands.add_parser("show", help="一张工单：完整手机号、对话记录")
    show.add_argument("ticket_id", help="单号，如 HJ20260930ABC123")
    close = commands.add_parser("close", help="关闭工单，须填备注")
    close.add_argument("ticket_id", help="单号")
    close.add_argument("--note", default="", help="关闭备注，如 已回电，问题已解决")
    commands.add_parser("purge", help="删除关闭超过 TICKET_PHONE_RETENTION_DAYS 天的工单的手机号")
    return p


def run(args: argparse.Namespace, store: TicketStore, out: Any, err: Any) -> int:
    purged = store.purge_phones()
    command = args.command or "list"
    if command == "purge":
        days = get_settings().ticket_phone_retention_days
        print(f"已删除 {purged} 张关闭超过 {days:g} 天的工单的手机号。", file=out)
        return EXIT_OK
    if command == "list":
        print_list(store.list_open(), out)
        return EXIT_OK
    ticket = store.get(args.ticket_id)
    if ticket is None:
        print(f"没有这张工单：{one_line(args.ticket_id)[:40]}", file=err)
        return EXIT_INVALID
    if command == "show":
        print_ticket(ticket, store.phone_of(ticket.ticket_id), out)
        print_transcript(ticket.conversation, out)
        return EXIT_OK
    try:
        closed = store.close(ticket.ticket_id, args.note)
    except ValueError:
        print("关闭工单须填备注：--note \"处理结果\"", file=err)
        return EXIT_INVALID
    except TicketClosed as error:
        print(f"工单 {error.ticket_id} 已于 {_moment(error.closed_at)} 关闭。", file=err)
        return EXIT_INVALID
    except TicketNotFound:
        print(f"没有这张工单：{ticket.ticket_id}", file=err)
        return EXIT_INVALID
    print(f"工单 {closed.ticket_id} 已关闭。手机号将于 {get_settings().ticket_phone_retention_days:g} 天后删除。",
          file=out)
    return EXIT_OK


def main(argv: Iterable[str] | None = None) -> int:
    args = parser().parse_args(list(argv) if argv is not None else None)
    log_masking.install()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    store = TicketStore()
    try:
        return run(args, store, sys.stdout, sys.stderr)
    except RegistryUnavailable as error:
        print(f"工单库不可用（TERMINAL_DB_URL）：{one_line(error)[:200]}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except RegistryError as error:
        print(f"工单库出错：{one_line(error)[:200]}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        store.registry.close()


if __name__ == "__main__":
    sys.exit(main())
