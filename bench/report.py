"""Turns the benchmark's results (the dict bench/run.py saves as latest.json) into latest.md,
headline.md and latest.png."""
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

NOT_TRAINED = "does not train"
LABELS = {
    "peer_a": "A (rasa init, language: zh)",
    "peer_a_en": "A as written (language: en)",
    "peer_b": "B (Jieba + DIET + TED)",
    "ours": "ours",
}
SHORT = {"peer_a": "A", "peer_a_en": "A(en)", "peer_b": "B", "ours": "ours"}
RATIOS = [("peer_b", "ours ÷ B"), ("peer_a_en", "ours ÷ A(en)")]
NLU_ROWS = [
    ("intent_accuracy", "intent accuracy"),
    ("macro_f1", "intent macro F1"),
    ("oos_rejection", "out_of_scope rejection"),
    ("faq_selection_accuracy", "faq response selection accuracy"),
    ("blind_intent_accuracy", "blind set: intent accuracy"),
    ("blind_label_accuracy", "blind set: intent and FAQ key"),
    ("dev_answers", "dev set: right answers (live server)"),
]
# Shown, but no target: the terminal_id F1 compared our rule-based extractor with peers
# whose training data has no entity annotations, so it could only pass.
INFO_ROWS = [
    ("terminal_id_f1", "terminal_id entity F1 (rule vs. unannotated peers; no target)"),
    ("blind_confident_error_rate", "blind set: confident errors (lower is better; no target)"),
    ("dev_confident_error_rate", "dev set: confident errors (lower is better; no target)"),
]
LOAD_ROWS = [
    ("msg_per_s", "msg/s", "{:.1f}", True),
    ("p50_ms", "p50 ms", "{:.0f}", True),
    ("p95_ms", "p95 ms", "{:.0f}", True),
    ("p99_ms", "p99 ms", "{:.0f}", True),
    ("errors", "errors", "{:g}", False),
    ("empty", "empty replies", "{:g}", False),
    ("wrong_lookups", "wrong lookups", "{:g}", False),
    ("wrong_faq_answers", "wrong FAQ answers", "{:g}", False),
]
SENDER_PER = {
    "user": "one sender id per user for the whole load test (so each conversation grows as it runs)",
    "conversation": "a new sender id for every conversation",
}
TARGET_USERS = 10
TARGET_SPEEDUP = 3.0
TARGET_P95_MS = 150.0
TARGET_TRAIN_S = 120.0
TARGET_FIRST_ANSWER_S = 20.0

Row = Tuple[str, Callable[[Dict[str, Any]], Optional[float]], str, bool]


def label(name: str) -> str:
    return LABELS.get(name, name)


def rows(users: List[int]) -> List[Row]:
    """(title, getter on a config's summary, number format, show ratio)."""
    table: List[Row] = [
        (title, (lambda s, k=key: (s.get("nlu") or {}).get(k)), "{:.3f}", True) for key, title in NLU_ROWS + INFO_ROWS
    ]
    table += [
        ("training s", lambda s: s.get("train_s"), "{:.0f}", True),
        ("first answer s", lambda s: s.get("first_answer_s"), "{:.1f}", True),
        ("peak memory MB", lambda s: s.get("peak_memory_mb"), "{:.0f}", True),
    ]
    for n in users:
        for key, title, fmt, ratio in LOAD_ROWS:
            table.append((f"{users_label(n)}: {title}", (lambda s, k=key, n=n: load(s, n).get(k)), fmt, ratio))
    return table


def users_label(n: int) -> str:
    return f"{n} user" if n == 1 else f"{n} users"


def load(summary: Dict[str, Any], users: int) -> Dict[str, Any]:
    return (summary.get("load") or {}).get(str(users)) or {}


def cell(summary: Dict[str, Any], getter: Callable, fmt: str) -> str:
    if summary.get("status") == "failed_training":
        return NOT_TRAINED
    value = getter(summary)
    return "—" if value is None else fmt.format(value)


def ratio(summaries: Dict[str, Dict], peer: str, getter: Callable) -> str:
    if "ours" not in summaries or peer not in summaries:
        return "—"
    ours, other = getter(summaries["ours"]), getter(summaries[peer])
    if ours is None or other is None or other == 0:
        return "—"
    return f"{ours / other:.2f}×"


def table(result: Dict[str, Any]) -> List[str]:
    summaries = result["summary"]
    names = list(summaries)
    ratios = [(peer, title) for peer, title in RATIOS if peer in summaries and "ours" in summaries]
    header = ["metric"] + [label(n) for n in names] + [title for _, title in ratios]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for title, getter, fmt, with_ratio in rows(result["settings"]["users"]):
        cells = [title] + [cell(summaries[n], getter, fmt) for n in names]
        cells += [ratio(summaries, peer, getter) if with_ratio else "" for peer, _ in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def header(result: Dict[str, Any]) -> List[str]:
    meta, settings = result["meta"], result["settings"]
    return [
        "# Benchmark: ours vs stock Rasa configurations",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['cpu']}, {meta['cpu_count']} CPUs, {meta['mem_total_gb']:.1f} GB RAM "
        f"(load average at start {meta['loadavg']})",
        f"- Python {meta['python']}, Rasa {meta['rasa']}, git {meta['git']}",
        f"- runs: {settings['train_runs']} training run(s) per config, {settings['runs']} server run(s) "
        f"(first answer, memory, load at {', '.join(map(str, settings['users']))} users for "
        f"{settings['duration']:g} s after {settings['warmup']:g} s warm-up); medians shown",
        f"- load: closed-loop virtual users, {SENDER_PER[settings.get('sender_per', 'conversation')]}",
        "- same domain.yml, data/ and action server for every config; ours is served as `make run` "
        "serves it (its channels, SQL tracker store on SQLite), the peers as Rasa serves a project "
        "out of the box (REST channel, in-memory tracker store); NLU scored on tests/nlu_test.yml (held out)",
        "",
    ]


def notes(result: Dict[str, Any]) -> List[str]:
    lines = [
        "",
        "Ratios are ours divided by the peer: for accuracy figures and msg/s above 1 is better; "
        "for latency, time and memory below 1 is better.",
        "Accuracy figures are on the prediction a user gets (after FallbackClassifier); "
        "nlu_fallback counts as a correct rejection only for out_of_scope. With several trainings "
        "per config (BENCH_TRAIN_RUNS), each is scored and the medians are shown.",
        "Load: closed-loop users, ~60 % FAQ questions and ~40 % three-message terminal lookups; "
        "errors = exception, timeout (10 s), HTTP status other than 200 or the bot's backend-failure "
        "apology; empty = 200 with no text.",
    ]
    for name, summary in result["summary"].items():
        if summary.get("status") == "failed_training":
            lines.append(f"{label(name)} {NOT_TRAINED}: {summary.get('reason')}")
        elif summary.get("model_given"):
            lines.append(f"{label(name)}: not trained in this run; model given ({summary.get('model')}).")
        for problem in summary.get("problems") or []:
            lines.append(f"{label(name)}: {problem}")
    return lines


def check(ok: Optional[bool], why_not_measured: str = "not measured") -> str:
    return f"n/a ({why_not_measured})" if ok is None else ("PASS" if ok else "FAIL")


def targets(result: Dict[str, Any]) -> List[str]:
    summaries = result["summary"]
    ours = summaries.get("ours")
    lines = ["", "## Targets", "", "| target | ours | reference | result |", "|---|---|---|---|"]
    if not ours or ours.get("status") == "failed_training":
        return lines + ["| all | — | — | n/a (ours not measured) |"]
    peers = {n: s for n, s in summaries.items() if n != "ours" and s.get("nlu")}
    for key, title in NLU_ROWS:
        mine = (ours.get("nlu") or {}).get(key)
        scored = [(s["nlu"].get(key), n) for n, s in peers.items() if s["nlu"].get(key) is not None]
        best = max(scored) if scored else None
        ok = None if mine is None or best is None else mine >= best[0]
        ref = f"{best[0]:.3f} ({SHORT.get(best[1], best[1])})" if best else "—"
        lines.append(f"| {title} ≥ best peer | {fmt(mine, '{:.3f}')} | {ref} | {check(ok, 'no peer scored')} |")
    lines += load_targets(summaries)
    train_s, first_s = ours.get("train_s"), ours.get("first_answer_s")
    lines.append(f"| training < {TARGET_TRAIN_S:.0f} s | {fmt(train_s, '{:.0f} s')} | | "
                 f"{check(None if train_s is None else train_s < TARGET_TRAIN_S, 'model given')} |")
    lines.append(f"| first answer ≤ {TARGET_FIRST_ANSWER_S:.0f} s | {fmt(first_s, '{:.1f} s')} | | "
                 f"{check(None if first_s is None else first_s <= TARGET_FIRST_ANSWER_S)} |")
    return lines


def load_targets(summaries: Dict[str, Dict]) -> List[str]:
    ours = load(summaries["ours"], TARGET_USERS)
    peer = load(summaries.get("peer_b") or {}, TARGET_USERS)
    why = f"{TARGET_USERS} users not run"
    mine, theirs = ours.get("msg_per_s"), peer.get("msg_per_s")
    speedup_ok = None if mine is None or not theirs else mine >= TARGET_SPEEDUP * theirs
    p95 = ours.get("p95_ms")
    bad = ours.get("errors_all_runs"), ours.get("empty_all_runs")
    clean_ok = None if None in bad else sum(bad) == 0
    wrong = ours.get("wrong_lookups_all_runs"), ours.get("wrong_faq_answers_all_runs")
    right_ok = None if None in wrong else sum(wrong) == 0
    return [
        f"| {TARGET_USERS} users: msg/s ≥ {TARGET_SPEEDUP:g}× B | {fmt(mine, '{:.1f}')} | "
        f"{fmt(theirs, '{:.1f} (B)')} | {check(speedup_ok, why if not ours else 'B not measured')} |",
        f"| {TARGET_USERS} users: p95 ≤ {TARGET_P95_MS:.0f} ms | {fmt(p95, '{:.0f} ms')} | | "
        f"{check(None if p95 is None else p95 <= TARGET_P95_MS, why)} |",
        f"| {TARGET_USERS} users: zero errors and empty replies (all runs) | "
        f"{'—' if clean_ok is None else f'{bad[0]} errors, {bad[1]} empty'} | | {check(clean_ok, why)} |",
        f"| {TARGET_USERS} users: every lookup and FAQ answer right (all runs) | "
        f"{'—' if right_ok is None else f'{wrong[0]} wrong lookups, {wrong[1]} wrong FAQ answers'} | | "
        f"{check(right_ok, why)} |",
    ]


def fmt(value: Optional[float], pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def markdown(result: Dict[str, Any]) -> str:
    return "\n".join(header(result) + table(result) + notes(result) + targets(result)) + "\n"


def headline(result: Dict[str, Any]) -> str:
    """A few rows for the README: ours against the peers that have numbers."""
    summaries = result["summary"]
    names = [n for n in ("ours", "peer_b", "peer_a_en", "peer_a") if n in summaries]
    users = result["settings"]["users"]
    n = TARGET_USERS if TARGET_USERS in users else max(users)
    wanted = {"intent accuracy", "out_of_scope rejection", "training s", "first answer s",
              f"{users_label(n)}: msg/s", f"{users_label(n)}: p95 ms"}
    lines = ["| | " + " | ".join(label(x) for x in names) + " |", "|---|" + "---|" * len(names)]
    for title, getter, fmt_, _ in rows(users):
        if title in wanted:
            lines.append(f"| {title} | " + " | ".join(cell(summaries[x], getter, fmt_) for x in names) + " |")
    meta = result["meta"]
    lines += ["", f"Measured {meta['date'][:10]} on {meta['cpu']} ({meta['cpu_count']} CPUs), "
                  f"same data for every config; full table: bench/results/latest.md."]
    return "\n".join(lines) + "\n"


def plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries, users = result["summary"], result["settings"]["users"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for name, summary in summaries.items():
        points = [(n, load(summary, n)) for n in users if load(summary, n)]
        if points:
            xs = [n for n, _ in points]
            axes[0][0].plot(xs, [p["msg_per_s"] for _, p in points], marker="o", label=SHORT.get(name, name))
            axes[0][1].plot(xs, [p["p95_ms"] for _, p in points], marker="o", label=SHORT.get(name, name))
    for ax, title in ((axes[0][0], "throughput (msg/s)"), (axes[0][1], "p95 latency (ms)")):
        ax.set_title(title)
        ax.set_xlabel("concurrent users")
        ax.set_xticks(users)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    bars(axes[1][0], summaries, "train_s", "training time (s)")
    bars(axes[1][1], summaries, "first_answer_s", "time to first answer (s)")
    fig.suptitle(f"ours vs stock Rasa configs — {result['meta']['date'][:10]}, {result['meta']['cpu_count']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bars(ax, summaries: Dict[str, Dict], key: str, title: str) -> None:
    names = list(summaries)
    values = [summaries[n].get(key) or 0 for n in names]
    ax.bar([SHORT.get(n, n) for n in names], values, color="#4878a8")
    for i, name in enumerate(names):
        status = summaries[name].get("status")
        if status == "failed_training":
            ax.text(i, 0, NOT_TRAINED, ha="center", va="bottom", rotation=90, fontsize=8)
        elif summaries[name].get(key) is None:
            ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(values + [1]) * 1.1)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)


def write_all(result: Dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(markdown(result), encoding="utf-8")
    (out / "headline.md").write_text(headline(result), encoding="utf-8")
    plot(result, out / "latest.png")
