"""How fast the WeChat channel answers WeChat: acknowledgement latency (time from POST to the
HTTP response, passive reply or "success") under a steady stream of encrypted messages.

Starts the real Rasa and action servers with credentials.wechat.yml on free local ports (or
uses --url and the WECHAT_* environment of a running bot), sends --rate messages per second
for --seconds from a pool of users, and prints p50/p90/p99/max. Bounded: at most 2,000
requests and 300 seconds; localhost only.

    .venv/bin/python bench/wechat_ack.py --rate 5 --seconds 60
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lakala_server.wechat.simulator import FakeWeChatAPI, WeChatSimulator, demo_settings  # noqa: E402
from tests.support.servers import MODEL, Bot  # noqa: E402

QUESTIONS = ["押金能退吗", "POS机怎么注销", "注销要多久", "多久不用会自动注销", "提前注销有违约金吗",
             "拉卡拉账户怎么注销", "沉睡了怎么激活", "你好", "一清和二清是什么", "谢谢"]
MAX_REQUESTS = 2000
MAX_SECONDS = 300
WECHAT_TIMEOUT = 5.0


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def run(sim: WeChatSimulator, rate: float, seconds: float, users: int) -> Dict[str, object]:
    total = min(MAX_REQUESTS, int(rate * seconds))
    openids = ["o" + uuid.uuid4().hex[:27] for _ in range(users)]
    latencies: List[float] = []
    outcomes = {"reply": 0, "ack": 0, "timeout": 0, "error": 0}
    lock = threading.Lock()

    def one(index: int) -> None:
        openid = openids[index % users]
        xml = sim.text(openid, QUESTIONS[index % len(QUESTIONS)])
        url, body = sim.envelope(xml)
        attempt = sim.post(url, body, timeout=WECHAT_TIMEOUT)
        with lock:
            if attempt.timed_out:
                outcomes["timeout"] += 1
                latencies.append(WECHAT_TIMEOUT)
                return
            latencies.append(attempt.seconds)
            if attempt.status != 200:
                outcomes["error"] += 1
            elif attempt.body == b"success":
                outcomes["ack"] += 1
            else:
                outcomes["reply"] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=min(64, max(4, int(rate * WECHAT_TIMEOUT) + 2))) as pool:
        for index in range(total):
            due = started + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if time.monotonic() - started > MAX_SECONDS:
                break
            pool.submit(one, index)
    elapsed = time.monotonic() - started
    return {
        "requests": len(latencies), "rate_per_s": rate, "elapsed_s": round(elapsed, 1), "users": users,
        "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
        "p90_ms": round(1000 * percentile(latencies, 0.90), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "max_ms": round(1000 * max(latencies), 1),
        "mean_ms": round(1000 * statistics.mean(latencies), 1),
        "within_5s": sum(1 for value in latencies if value < WECHAT_TIMEOUT) / len(latencies),
        **outcomes,
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=5.0, help="messages per second (default 5)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to send (default 60)")
    parser.add_argument("--users", type=int, default=25, help="distinct OpenIDs taking turns (default 25)")
    parser.add_argument("--mode", choices=["safe", "compat", "plain"], default="safe")
    parser.add_argument("--url", help="a running channel (its WECHAT_* settings in the environment)")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "wechat_ack.json"))
    args = parser.parse_args(argv)
    if not (0 < args.rate <= 50 and 0 < args.seconds <= MAX_SECONDS):
        parser.error(f"--rate must be in (0, 50] and --seconds in (0, {MAX_SECONDS}]")
    bot = api = None
    if args.url:
        settings, url = {name: os.environ[name] for name in
                         ("WECHAT_TOKEN", "WECHAT_APPID", "WECHAT_ENCODING_AES_KEY")}, args.url
    else:
        if not MODEL.exists():
            print("no trained model: run `make train` first", file=sys.stderr)
            return 2
        settings = demo_settings()
        api = FakeWeChatAPI(settings["WECHAT_APPID"], settings["WECHAT_APPSECRET"]).start()
        bot = Bot(Path(tempfile.mkdtemp(prefix="wechat-bench-")),
                  extra_env={**settings, "WECHAT_API_BASE": api.base_url},
                  credentials=ROOT / "credentials.wechat.yml")
        print("starting the Rasa and action servers ...", flush=True)
        bot.start()
        url = f"http://127.0.0.1:{bot.rasa_port}/webhooks/wechat/webhook"
    try:
        sim = WeChatSimulator(url, settings["WECHAT_TOKEN"], settings["WECHAT_APPID"],
                              settings["WECHAT_ENCODING_AES_KEY"], mode=args.mode)
        sim.deliver(sim.text("o" + uuid.uuid4().hex[:27], "你好"))  # load the model's caches first
        result = run(sim, args.rate, args.seconds, args.users)
        result["mode"] = args.mode
    finally:
        if bot is not None:
            bot.stop()
        if api is not None:
            api.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    print(f"acknowledgement latency: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms "
          f"({result['requests']} messages at {args.rate}/s; {result['reply']} passive replies, "
          f"{result['ack']} acknowledged, {result['timeout']} over 5 s)")
    return 0 if result["timeout"] == 0 and result["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
