"""Closed-loop load on a Rasa REST channel: N virtual users, each sending its next message as
soon as the previous answer arrives, for a fixed time. Prints one JSON object on stdout.

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:5005 --users 10 --duration 20

Each conversation has its own sender id (a merchant's visit; with --sender-per user, one id per
user for the whole run) and users loop over conversations drawn at random:
about 60 % single FAQ questions and 40 % terminal lookups (ask for a lookup, give one of the
five demo terminal ids, then its registered phone tail). A lookup whose last answer does not
name the terminal counts as wrong. Errors are exceptions, timeouts, HTTP statuses other than
200 and the bot's own apology for a failed backend (utter_backend_failed in domain.yml); empty
means a 200 with no text in any message.

Messages sent during the first --warmup seconds are not counted; counted are the messages sent
in the --duration seconds after that (each awaited to its end), so msg/s = messages / duration.
"""
import argparse
import asyncio
import json
import math
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent

TIMEOUT_S = 10.0
FAQ_SHARE = 0.6

# Written for the benchmark; not taken from data/ or tests/, so no model has seen them.
# (question, what a right answer contains: '|'-separated alternatives). Under load the
# answers are checked, not only that one came.
FAQ_QUESTIONS = [
    ("我的刷卡机不想用了，要怎么去注销", "业务人员"),
    ("注销POS机需要准备什么材料吗", "业务人员|委托书"),
    ("当初交的押金，注销以后能拿回来吗", "押金"),
    ("押金什么时候退到我卡上", "押金"),
    ("合同还没到期就注销，要交违约金吗", "违约金"),
    ("提前解约的话违约金大概多少钱", "违约金"),
    ("机器好几个月没刷了，是不是沉睡了", "沉睡"),
    ("什么情况下终端会被系统自动注销", "自动注销"),
    ("长期不用的POS会不会自己被注销掉", "自动注销"),
    ("提交注销申请以后要等几天才能办完", "工作日"),
    ("注销一般多少个工作日能完成", "工作日"),
    ("机器里的流量卡要我自己交费吗", "流量卡|没有相关资料"),
    ("流量卡的费用是怎么收的", "流量卡|没有相关资料"),
    ("沉睡的终端怎么用激活码重新激活", "激活码"),
    ("激活码在哪里可以拿到", "激活码"),
    ("我想找人工客服", "人工"),
    ("能不能帮我转接人工", "人工"),
    ("不用的机器一定要办注销吗，放着不管行不行", "沉睡"),
    ("我的拉卡拉商户账户也想一起注销，怎么弄", "委托书"),
    ("刷卡的钱提现要多久到账", "没有相关资料|转人工"),
]

LOOKUP_OPENERS = [
    "帮我查下终端状态",
    "想查查我这台机器现在是什么状态",
    "能帮我看看终端还能不能用吗",
    "查一下我的POS状态",
    "麻烦查询一下终端情况",
]

# The five demo terminals the action server seeds, with their registered phone tails.
TERMINALS = [("30091254", "6721"), ("K7306118", "0839"), ("88004521", "1456"),
             ("A0012345", "2290"), ("55550001", "9088")]




def failure_texts() -> List[str]:
    """What the bot says when its backend failed: an error, not an answer."""
    domain = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))
    return [v["text"].strip() for v in domain["responses"].get("utter_backend_failed", []) if v.get("text")]


FAILURE_TEXTS = failure_texts()


@dataclass
class Stats:
    latencies_ms: List[float] = field(default_factory=list)
    errors: int = 0
    empty: int = 0
    lookups: int = 0
    wrong_lookups: int = 0
    faq_answers: int = 0
    wrong_faq_answers: int = 0
    error_kinds: dict = field(default_factory=dict)


def conversation(rng: random.Random) -> Tuple[str, List[str], str]:
    """(kind, messages, text the last answer must contain)."""
    if rng.random() < FAQ_SHARE:
        question, must_contain = rng.choice(FAQ_QUESTIONS)
        return "faq", [question], must_contain
    terminal_id, tail = rng.choice(TERMINALS)
    return "lookup", [rng.choice(LOOKUP_OPENERS), terminal_id, tail], terminal_id


async def send(session: aiohttp.ClientSession, url: str, sender: str, text: str) -> Tuple[str, str]:
    """(outcome, joined reply text) where outcome is ok, empty or an error kind."""
    try:
        async with session.post(url, json={"sender": sender, "message": text}) as response:
            if response.status != 200:
                return f"http_{response.status}", ""
            messages = await response.json(content_type=None)
    except asyncio.TimeoutError:
        return "timeout", ""
    except (aiohttp.ClientError, ValueError) as error:
        return type(error).__name__, ""
    texts = [m.get("text") or "" for m in messages or [] if isinstance(m, dict)]
    if any(text.strip() in FAILURE_TEXTS for text in texts):
        return "backend_failed", "\n".join(texts)
    return ("ok" if any(texts) else "empty"), "\n".join(texts)


async def user(session, url: str, index: int, run_id: str, rng: random.Random,
               window: Tuple[float, float], stats: Stats, sender_per: str = "conversation") -> None:
    sender = f"bench-{run_id}-u{index}"
    start, end = window
    count = 0
    while time.monotonic() < end:
        kind, messages, must_contain = conversation(rng)
        count += 1
        if sender_per == "conversation":
            sender = f"bench-{run_id}-u{index}-c{count}"
        reply, outcome = "", "ok"
        for text in messages:
            sent = time.monotonic()
            if sent >= end:
                return
            outcome, reply = await send(session, url, sender, text)
            if sent >= start:
                record(stats, outcome, (time.monotonic() - sent) * 1000)
            if outcome not in ("ok", "empty"):
                break  # a failed step spoils the rest of this conversation
        if kind == "lookup" and outcome in ("ok", "empty") and sent >= start:
            stats.lookups += 1
            stats.wrong_lookups += must_contain not in reply
        if kind == "faq" and outcome in ("ok", "empty") and sent >= start:
            stats.faq_answers += 1
            stats.wrong_faq_answers += not any(alt in reply for alt in must_contain.split("|"))


def record(stats: Stats, outcome: str, latency_ms: float) -> None:
    stats.latencies_ms.append(latency_ms)
    if outcome == "empty":
        stats.empty += 1
    elif outcome != "ok":
        stats.errors += 1
        stats.error_kinds[outcome] = stats.error_kinds.get(outcome, 0) + 1


def percentile(values: List[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


async def run(url: str, users: int, duration: float, warmup: float, seed: int,
              sender_per: str = "conversation") -> dict:
    endpoint = url.rstrip("/") + "/webhooks/rest/webhook"
    run_id = uuid.uuid4().hex[:10]
    stats = Stats()
    started = time.monotonic()
    window = (started + warmup, started + warmup + duration)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=users)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(
            user(session, endpoint, i, run_id, random.Random(seed * 1000 + i), window, stats, sender_per)
            for i in range(users)
        ))
    result = summary(stats, users, duration, warmup, seed, time.monotonic() - started)
    result["sender_per"] = sender_per
    return result


def summary(stats: Stats, users: int, duration: float, warmup: float, seed: int, wall: float) -> dict:
    lat = stats.latencies_ms
    return {
        "users": users, "duration": duration, "warmup": warmup, "seed": seed, "wall_s": round(wall, 2),
        "messages": len(lat), "msg_per_s": round(len(lat) / duration, 2),
        "p50_ms": round(percentile(lat, 0.50), 1), "p95_ms": round(percentile(lat, 0.95), 1),
        "p99_ms": round(percentile(lat, 0.99), 1), "max_ms": round(max(lat), 1) if lat else None,
        "errors": stats.errors, "error_kinds": stats.error_kinds, "empty": stats.empty,
        "lookups": stats.lookups, "wrong_lookups": stats.wrong_lookups,
        "faq_answers": stats.faq_answers, "wrong_faq_answers": stats.wrong_faq_answers,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="base URL of the Rasa server, e.g. http://127.0.0.1:5005")
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sender-per", choices=("user", "conversation"), default="conversation",
                        help="a new sender id for every conversation (default: a merchant's visit), or one per "
                             "user for the whole run (its tracker grows all run long)")
    args = parser.parse_args()
    if args.users < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--users >= 1, --duration > 0 and --warmup >= 0")
    result = asyncio.run(run(args.url, args.users, args.duration, args.warmup, args.seed, args.sender_per))
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
