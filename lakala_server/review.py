"""`make review`: the messages the bot was unsure about, read from the tracker store and
written as a Rasa NLU file a person edits into training data.

A user message is listed when the bot fell back (nlu_fallback), rejected it as out of
scope, or chose an intent below a confidence threshold. Messages are masked (digits,
terminal numbers, mobiles, e-mails, ID numbers, long ids) before anything is written,
grouped when near-identical, and sender ids are never written.

    python -m lakala_server.review [--since 7d] [--until ...] [--below 0.6] [--db URL] [--out FILE]
"""
import argparse
import datetime as dt
import json
import re
import sys
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from lakala_nlu.text import MAX_MESSAGE_CHARS, within_distance
from lakala_server import config

DEFAULT_SINCE = "7d"
DEFAULT_BELOW = 0.6
DEFAULT_OUT = Path("results/review.yml")
# At most this many listed messages are grouped (the most recent): bounds time and memory.
MAX_MESSAGES = 5000
MAX_VARIANTS = 5
# Near-identical is judged on the first this many normalised characters (bounds the work).
NEAR_CHARS = 60
FALLBACK = "nlu_fallback"
OUT_OF_SCOPE = "out_of_scope"
USER_EVENT = "user"

EVENTS = sa.table(
    "events",
    sa.column("sender_id"),
    sa.column("type_name"),
    sa.column("timestamp"),
    sa.column("intent_name"),
    sa.column("data"),
)

# --- masking ---------------------------------------------------------------------------

_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"), "-")
_SEP = r"[ \-]"
_ALNUM = "0-9A-Za-z"
EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
ID_CARD = re.compile(rf"(?<![{_ALNUM}])\d{{6}}{_SEP}?\d{{8}}{_SEP}?\d{{3}}[\dXx](?![{_ALNUM}])")
MOBILE = re.compile(rf"(?<![{_ALNUM}+])(?:\+?86{_SEP}?)?1[3-9]\d(?:{_SEP}?\d){{8}}(?![{_ALNUM}])")
# OpenIDs, tokens, card numbers with letters: long letter-digit strings.
LONG_ID = re.compile(r"(?<![0-9A-Za-z_\-])[0-9A-Za-z_\-]{12,}(?![0-9A-Za-z_\-])")
# 8 letters or digits, once split by a space or a dash at most, not inside a longer number.
TERMINAL_ID = re.compile(
    rf"(?<![{_ALNUM}])(?<!\d{_SEP})[{_ALNUM}](?:{_SEP}?[{_ALNUM}]){{7}}(?![{_ALNUM}])(?!{_SEP}\d)"
)
# 4 or more digits (Arabic or Chinese numerals), spaces or dashes between them allowed;
# `****` is how the tracker store writes a phone tail.
_NUMERAL = "0-9零〇一二三四五六七八九幺"
DIGITS = re.compile(rf"[{_NUMERAL}](?:{_SEP}?[{_NUMERAL}]){{3,}}|\*{{4}}")
_HAS_DIGIT = re.compile(r"\d")
_HAS_LETTER = re.compile(r"[A-Za-z_]")
_SEPARATOR = re.compile(_SEP)

MASKS = (
    (EMAIL, "<email>", None),
    (ID_CARD, "<id_card>", None),
    (MOBILE, "<mobile>", None),
    (LONG_ID, "<id>", lambda s: bool(_HAS_DIGIT.search(s) and _HAS_LETTER.search(s))),
    (TERMINAL_ID, "<terminal_id>", lambda s: bool(_HAS_DIGIT.search(s)) and len(_SEPARATOR.findall(s)) <= 1),
    (DIGITS, "<number>", None),
)


def fold(text: str) -> str:
    """Full-width and other compatibility forms folded to ASCII, any script's digits to 0-9,
    one character for one."""
    chars = []
    for char in text:
        folded = unicodedata.normalize("NFKC", char)
        folded = folded if len(folded) == 1 else char
        digit = unicodedata.decimal(folded, None)
        chars.append(str(digit) if digit is not None else folded)
    return "".join(chars).translate(_DASHES)


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """The text with anything that could identify a merchant replaced by a <placeholder>.

    Patterns match on the folded text (so ６７２１ and 138－0000－6721 count) and replace
    the same spans of the original, which keeps the rest of the message as typed."""
    original = text
    for secret in secrets:
        if secret and len(secret) >= 6 and secret in original:
            original = original.replace(secret, "<id>")
    folded = fold(original)
    for pattern, placeholder, accept in MASKS:
        parts_o, parts_f, last = [], [], 0
        for match in pattern.finditer(folded):
            if accept is not None and not accept(match.group()):
                continue
            start, end = match.span()
            parts_o += [original[last:start], placeholder]
            parts_f += [folded[last:start], placeholder]
            last = end
        if parts_o:
            original = "".join(parts_o) + original[last:]
            folded = "".join(parts_f) + folded[last:]
    return original


# --- grouping --------------------------------------------------------------------------


def normalize(text: str) -> str:
    """NFKC, casefolded, without punctuation, symbols, spaces or control characters."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in text if unicodedata.category(c)[0] not in "PSZC")


def allowed_distance(length: int) -> int:
    """How many edits still make two normalised texts of this (longer) length near-identical."""
    if length < 4:
        return 0
    if length < 8:
        return 1
    if length <= 20:
        return 2
    return length // 10


@dataclass
class Listed:
    """One listed user message, already masked."""

    text: str
    intent: str
    confidence: float
    reason: str  # "fallback", "out_of_scope" or "low"
    timestamp: float
    sender: str = field(repr=False)  # counted, never written


@dataclass
class Group:
    key: str
    messages: List[Listed] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.messages)

    def _texts(self) -> List[str]:
        return [text for text, _ in Counter(m.text for m in self.messages).most_common()]

    @property
    def text(self) -> str:
        return self._texts()[0]

    @property
    def variants(self) -> List[str]:
        return self._texts()[1 : 1 + MAX_VARIANTS]

    @property
    def intent(self) -> str:
        return Counter(m.intent for m in self.messages).most_common(1)[0][0]

    @property
    def confidence(self) -> float:
        scores = [m.confidence for m in self.messages if m.intent == self.intent]
        return sum(scores) / len(scores)

    @property
    def senders(self) -> int:
        return len({m.sender for m in self.messages})

    @property
    def reasons(self) -> Counter:
        return Counter(m.reason for m in self.messages)

    @property
    def first_seen(self) -> float:
        return min(m.timestamp for m in self.messages)

    @property
    def last_seen(self) -> float:
        return max(m.timestamp for m in self.messages)


def group_messages(messages: Iterable[Listed]) -> List[Group]:
    """Groups messages identical after `normalize` or within `allowed_distance` of a group's
    first message (the earliest such group; long texts compared on their first NEAR_CHARS
    characters); most frequent first."""
    exact: Dict[str, Group] = {}
    near = _NearIndex()
    groups: List[Group] = []
    for message in messages:
        key = normalize(message.text)
        group = exact.get(key) or near.find(key[:NEAR_CHARS])
        if group is None:
            group = Group(key)
            groups.append(group)
            near.add(group, len(groups))
        exact.setdefault(key, group)
        group.messages.append(message)
    return sorted(groups, key=lambda g: (-g.count, -g.last_seen, g.key))


def _longest_partner(length: int) -> int:
    """The longest key that can be near one of this length (l - length <= l // 10 for long keys)."""
    return max(length + 2, length * 10 // 9 + 1)


def _pieces(length: int) -> List[Tuple[int, int]]:
    """(start, end) of the pieces a key of this length is cut into: one more than the edits
    it can be apart from any partner, so a near key holds one piece unchanged, shifted by
    at most that many characters (pigeonhole)."""
    count = min(length, allowed_distance(_longest_partner(length)) + 1)
    cuts = [length * i // count for i in range(count + 1)] if count else [0, 0]
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


class _NearIndex:
    """Finds a group whose key is within `allowed_distance` of a new key without comparing
    it with every group: groups are indexed by the pieces of their keys, and only groups
    sharing a piece at a nearby position are compared (each comparison O(length x edits))."""

    def __init__(self) -> None:
        self._pieces: Dict[Tuple[int, int, str], List[Tuple[int, Group]]] = {}

    def add(self, group: Group, order: int) -> None:
        key = group.key[:NEAR_CHARS]
        for index, (start, end) in enumerate(_pieces(len(key))):
            self._pieces.setdefault((len(key), index, key[start:end]), []).append((order, group))

    def find(self, key: str) -> Optional[Group]:
        size = len(key)
        candidates: Dict[int, Group] = {}
        for length in range(max(1, size - allowed_distance(size)), _longest_partner(size) + 1):
            limit = allowed_distance(max(size, length))
            if abs(size - length) > limit:
                continue
            for index, (start, end) in enumerate(_pieces(length)):
                width = end - start
                for shift in range(max(0, start - limit), min(size - width, start + limit) + 1):
                    for order, group in self._pieces.get((length, index, key[shift : shift + width]), ()):
                        candidates.setdefault(order, group)
        for order in sorted(candidates):
            group = candidates[order]
            other = group.key[:NEAR_CHARS]
            if within_distance(key, other, allowed_distance(max(size, len(other)))):
                return group
        return None


# --- reading the tracker store --------------------------------------------------------------


def bot_choice(parse: Dict[str, Any]) -> Tuple[Optional[str], float]:
    """The intent the bot chose and its confidence; for nlu_fallback its best other guess.
    Retrieval intents are given in full (faq/...), as training data names them."""
    intent = parse.get("intent") or {}
    if intent.get("name") == FALLBACK:
        guesses = [e for e in parse.get("intent_ranking") or [] if e.get("name") not in (None, FALLBACK)]
        if guesses:
            intent = max(guesses, key=lambda e: e.get("confidence") or 0.0)
    name = intent.get("full_retrieval_intent_name") or intent.get("name")
    return name, float(intent.get("confidence") or 0.0)


def select(data: Dict[str, Any], below: float) -> Optional[Tuple[str, str, float]]:
    """(reason, the bot's choice, confidence) if a user event is to be listed, else None."""
    parse = data.get("parse_data") or {}
    name = (parse.get("intent") or {}).get("name")
    if not name:
        return None
    choice, confidence = bot_choice(parse)
    if name == FALLBACK:
        return "fallback", choice or FALLBACK, confidence
    if name == OUT_OF_SCOPE:
        return "out_of_scope", choice or OUT_OF_SCOPE, confidence
    if confidence < below:
        return "low", choice or name, confidence
    return None


@dataclass
class Review:
    read: int = 0
    listed: Counter = field(default_factory=Counter)
    skipped: int = 0  # listed but nothing to train: empty once masked, too long, button payloads
    kept: List[Listed] = field(default_factory=list)

    @property
    def total_listed(self) -> int:
        return sum(self.listed.values())

    @property
    def capped(self) -> bool:
        return self.total_listed - self.skipped > len(self.kept)


def user_events(url: str, since: float, until: Optional[float]) -> Iterator[Tuple[str, float, Dict[str, Any]]]:
    """(sender, timestamp, event data) of user messages in the period, most recent first."""
    engine = sa.create_engine(url, future=True)
    query = sa.select(EVENTS.c.sender_id, EVENTS.c.timestamp, EVENTS.c.data).where(
        EVENTS.c.type_name == USER_EVENT, EVENTS.c.timestamp >= since
    )
    if until is not None:
        query = query.where(EVENTS.c.timestamp < until)
    query = query.order_by(EVENTS.c.timestamp.desc())
    try:
        with engine.connect() as connection:
            result = connection.execution_options(stream_results=True).execute(query)
            for sender, timestamp, data in result.yield_per(1000):
                try:
                    event = json.loads(data)
                except (TypeError, ValueError):
                    continue
                if isinstance(event, dict):
                    yield sender or "", float(timestamp or 0.0), event
    finally:
        engine.dispose()


def review(
    url: str, since: float, until: Optional[float] = None, below: float = DEFAULT_BELOW, limit: int = MAX_MESSAGES
) -> Review:
    result = Review()
    for sender, timestamp, event in user_events(url, since, until):
        result.read += 1
        chosen = select(event, below)
        if chosen is None:
            continue
        reason, intent, confidence = chosen
        result.listed[reason] += 1
        raw = str(event.get("text") or "")
        text = "" if len(raw) > MAX_MESSAGE_CHARS else clean_line(mask(raw, [sender, sender.split(":", 1)[-1]]))
        if text.startswith("/") or not normalize(text):
            result.skipped += 1  # nothing to train: too long (the bot reads 300 characters), empty, a payload
        elif len(result.kept) < limit:
            result.kept.append(Listed(text, intent, confidence, reason, timestamp, sender))
    return result


# --- writing ---------------------------------------------------------------------------

# Characters YAML does not allow, and the ones it reads as line breaks.
_NOT_YAML = re.compile("[^\x09\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]|[\u2028\u2029]")
# Rasa's entity markup: [text](entity), [text]{...}, [text][...]
_ENTITY_MARKUP = re.compile(r"\[[^\]]*\][({\[]")
_SAFE_INTENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_/\-.]*$")


def clean_line(text: str) -> str:
    """One line of plain text that YAML and Rasa's reader take as it is."""
    text = " ".join(_NOT_YAML.sub(" ", text).split())
    if _ENTITY_MARKUP.search(text):
        text = text.replace("[", "［").replace("]", "］")
    return text


def _day(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d")


def _moment(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def _times(n: int) -> str:
    return "1 time" if n == 1 else f"{n} times"


REASON_NAMES = {"fallback": "fell back", "out_of_scope": "out of scope", "low": "low confidence"}


def describe(group: Group) -> str:
    first, last = _day(group.first_seen), _day(group.last_seen)
    days = first if first == last else f"{first}..{last}"
    senders = "1 sender" if group.senders == 1 else f"{group.senders} senders"
    reasons = ", ".join(f"{REASON_NAMES[r]} {n}" for r, n in sorted(group.reasons.items()))
    return (
        f"bot chose {group.intent} at {group.confidence:.2f}, seen {_times(group.count)} "
        f"by {senders}, {days}; {reasons}"
    )


def _intent_value(intent: str) -> str:
    return intent if _SAFE_INTENT.match(intent) else json.dumps(intent, ensure_ascii=False)


def render(groups: List[Group], header: List[str]) -> str:
    lines = [f"# {line}" if line else "#" for line in header]
    lines += ['version: "3.1"', "nlu:" if groups else "nlu: []"]
    for group in groups:
        lines.append(f"- intent: {_intent_value(group.intent)}  # {describe(group)}")
        lines.append("  examples: |")
        lines += [f"    - {text}" for text in [group.text, *group.variants]]
    return "\n".join(lines) + "\n"


def header_lines(result: Review, since: float, until: Optional[float], below: float, limit: int) -> List[str]:
    period = f"{_moment(since)} to {_moment(until) if until is not None else 'now'}"
    lines = [
        "Messages the bot was unsure about, for training (make review). Nothing here is trained yet.",
        f"Period {period} (local time). Listed: the bot fell back, answered out of scope,",
        f"or chose an intent below {below:.2f}. Near-identical messages are grouped, most frequent first.",
        "",
        "How to use it:",
        "1. Fix the `intent:` line of each group: the bot's choice is only its guess",
        "   (out_of_scope is right for questions the bot should decline; faq/... names an answer).",
        "2. Delete what should not be trained: whole groups, or single `- ` lines.",
        "   <number>, <mobile>, <terminal_id>, <email>, <id_card>, <id> mark masked details:",
        "   write a made-up value instead, or delete the line.",
        "3. Move the examples into data/nlu/*.yml (faq/... into data/nlu/faq.yml); to check them first,",
        "   run bench/tune_nlu.py --extra with this file (see README.md), then make train.",
        "The file is Rasa NLU YAML as it is; keep its indentation when editing.",
    ]
    if result.capped:
        lines.append(f"Only the {limit} most recent listed messages were grouped.")
    return lines


# --- command line ----------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str, now: Optional[float] = None, end_of_day: bool = False) -> float:
    """`7d`, `24h`, `30m`, `2w` ago, or an ISO date or date-time (local time unless it says
    otherwise). A bare date is its start, or with `end_of_day` its end."""
    now = time.time() if now is None else now
    relative = _RELATIVE.match(value)
    if relative:
        return now - float(relative.group(1)) * _UNITS[relative.group(2)]
    moment = dt.datetime.fromisoformat(value.strip())
    if end_of_day and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        moment += dt.timedelta(days=1)
    return moment.timestamp()


def _time_arg(end_of_day: bool):
    def convert(value: str) -> float:
        try:
            return parse_time(value, end_of_day=end_of_day)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not 7d, 24h, 30m, 2w or an ISO date: {value!r}") from None

    return convert


def _confidence(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.01:
        raise argparse.ArgumentTypeError("a confidence from 0 to 1 (1.01 lists every message)")
    return number


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lakala_server.review",
        description="List the messages the bot fell back on, rejected as out of scope or was unsure about, "
        "masked and grouped, as a Rasa NLU file to edit into training data.",
    )
    p.add_argument("--db", help="tracker store SQLAlchemy URL (default: TRACKER_DB_URL, else sqlite:///var/tracker.db)")
    p.add_argument("--since", type=_time_arg(False), default=DEFAULT_SINCE,
                   help=f"start: 7d, 24h, 30m, 2w ago or an ISO date/date-time (default {DEFAULT_SINCE})")
    p.add_argument("--until", type=_time_arg(True), default=None,
                   help="end, same forms; a bare date includes that day (default now)")
    p.add_argument("--below", type=_confidence, default=DEFAULT_BELOW,
                   help=f"also list messages whose intent confidence is below this (default {DEFAULT_BELOW}; "
                   "1.01 lists every message)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"file to write (default {DEFAULT_OUT})")
    p.add_argument("--limit", type=int, default=MAX_MESSAGES,
                   help=f"group at most this many listed messages, the most recent (default {MAX_MESSAGES})")
    return p


def store_url() -> str:
    """TRACKER_DB_URL, else the default SQLite file, as the server's tracker store chooses
    (tracker_store.tracker_db_url, without creating var/)."""
    return config.current().tracker_db_url


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _check_store(url: str) -> Optional[str]:
    """Why the URL holds no tracker store, or None."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        return "--db / TRACKER_DB_URL is not a database URL"
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            return f"no tracker store at {parsed.database} (set TRACKER_DB_URL or --db)"
    engine = sa.create_engine(url, future=True)
    try:
        if not sa.inspect(engine).has_table("events"):
            return f"no events table in {_safe_url(url)}"
    except sa.exc.DBAPIError as error:
        return f"cannot read {_safe_url(url)}: {error.orig}"
    finally:
        engine.dispose()
    return None


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)  # argparse converts the default --since too
    if args.until is not None and args.until <= args.since:
        print("review: --until is not after --since", file=sys.stderr)
        return 2
    url = args.db or store_url()
    problem = _check_store(url)
    if problem:
        print(f"review: {problem}", file=sys.stderr)
        return 1
    result = review(url, args.since, args.until, args.below, max(1, args.limit))
    groups = group_messages(result.kept)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        render(groups, header_lines(result, args.since, args.until, args.below, args.limit)), encoding="utf-8"
    )
    reasons = ", ".join(f"{REASON_NAMES[r]} {n}" for r, n in sorted(result.listed.items())) or "none"
    until = _moment(args.until) if args.until is not None else "now"
    print(f"review: {_moment(args.since)} to {until}, {_safe_url(url)}")
    print(f"  {result.read} user messages read, {result.total_listed} listed ({reasons})")
    if result.skipped:
        print(f"  {result.skipped} left out: empty once masked, too long, or button payloads")
    if result.capped:
        print(f"  only the {args.limit} most recent listed messages were grouped")
    print(f"  {len(groups)} groups written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
