"""Does a message cost more the longer its conversation is? One conversation of --messages
messages (FAQ questions, terminal lookups with verification, digressions, small talk) is sent
to each running server over REST, one message at a time; prints the median answer time of each
--band of messages, per server.

    .venv/bin/python bench/conversation_length.py --url http://127.0.0.1:5005 [--url http://127.0.0.1:5006]

With two or more --url, the servers get the same messages in turn (message 1 to each, then
message 2 to each, ...), so that whatever else the machine is doing falls on both alike:
point it at the code before and after a change. Last line per server: the median of messages
5-15 and of the same messages in the last round of the script, and their ratio (1.0: no growth
with the conversation's length).
"""
import argparse
import itertools
import json
import statistics
import sys
import time
import urllib.request
import uuid
from typing import Dict, List

FAQS = ["押金能退吗", "注销要多久", "多久不用会自动注销", "沉睡了怎么激活", "POS机的流量卡是什么",
        "提前注销有违约金吗", "拉卡拉账户怎么注销", "不用了需要注销吗", "一清和二清是什么意思"]
# One round of a merchant's messages; "{faq}" takes the next FAQ question.
ROUND = [
    "你好", "{faq}", "帮我查一下终端状态", "{faq}", "K7306118", "{faq}", "0839", "押金能退吗",
    "现在注销要违约金吗", "什么时候会被自动注销", "你是机器人吗", "谢谢", "查询终端状态", "算了",
    "{faq}", "帮我查一下终端30091254", "6721", "押金能退吗", "{faq}", "转人工",
]


def messages(count: int) -> List[str]:
    faqs = itertools.cycle(FAQS)
    return [text.format(faq=next(faqs)) if "{faq}" in text else text
            for text in itertools.islice(itertools.cycle(ROUND), count)]


def send(url: str, sender: str, text: str, timeout: float) -> float:
    """Seconds until the server answered; fails on an empty answer."""
    body = json.dumps({"sender": sender, "message": text}, ensure_ascii=False).encode()
    request = urllib.request.Request(f"{url.rstrip('/')}/webhooks/rest/webhook", data=body,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    elapsed = time.perf_counter() - started
    if not answer:
        raise RuntimeError(f"{url}: no answer to {text!r}")
    return elapsed


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", action="append", required=True, help="a Rasa server (repeat for several)")
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--band", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)

    run = uuid.uuid4().hex[:8]
    for url in args.url:  # the first messages of a server are slow (caches, connections): not counted
        for text in messages(10):
            send(url, f"warmup-{run}", text, args.timeout)
    times: Dict[str, List[float]] = {url: [] for url in args.url}
    for text in messages(args.messages):
        for url in args.url:
            times[url].append(send(url, f"length-{run}", text, args.timeout) * 1000)

    header = "messages    " + "".join(f"{url:>28}" for url in args.url)
    print(f"median answer time (ms) by position in one conversation of {args.messages} messages")
    print(header)
    for start in range(0, args.messages, args.band):
        cells = "".join(f"{statistics.median(times[url][start:start + args.band]):>28.1f}" for url in args.url)
        print(f"{start:>4}-{min(start + args.band, args.messages) - 1:<4}   {cells}")
    # The same messages of the script's first and last full round, so the mix is alike.
    late_start = (args.messages - 16) // len(ROUND) * len(ROUND) + 5
    for url in args.url:
        early, late = statistics.median(times[url][5:16]), statistics.median(times[url][late_start:late_start + 11])
        print(f"{url}: messages 5-15 {early:.1f} ms, {late_start}-{late_start + 10} (the same texts) {late:.1f} ms,"
              f" ratio {late / early:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
