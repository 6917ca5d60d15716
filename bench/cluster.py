"""Throughput of the cluster beside one process, on this machine, side by side.

    .venv/bin/python bench/cluster.py [--replicas 2] [--users 50] [--runs 3] [--duration 20]

Starts one process as `make run` does (`rasa run` and one action server, SQLite) and the cluster
as `make cluster` does (scripts/cluster.py: replicas, two action servers and nginx, with a
PostgreSQL and a Redis of its own). Then, --runs times, runs the benchmark's closed-loop load
(bench/loadgen.py) at --users against each in turn, alternating which goes first, and reports
the medians. During each cluster load it reads the CPU time of every process from /proc, so the
share taken by nginx, PostgreSQL, Redis and the action servers is measured, not guessed.
Writes bench/results/cluster.json and cluster.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import servers  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def descendants(pid: int) -> List[int]:
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        found.append(parent)
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            children = []
        queue.extend(int(child) for child in children)
    return found


def components(cluster: Cluster) -> Dict[str, List[int]]:
    """The processes of each part of the cluster, children included."""
    groups: Dict[str, List[int]] = {}
    for n in range(cluster.replicas):
        groups.setdefault("rasa replicas", []).extend(descendants(cluster.pid(f"rasa:rasa-{n}")))
    for n in range(cluster.action_servers):
        groups.setdefault("action servers", []).extend(descendants(cluster.pid(f"actions:actions-{n}")))
    groups["nginx"] = descendants(cluster.pid("nginx"))
    postmaster = int((cluster.postgres.data / "postmaster.pid").read_text().split()[0])
    groups["postgresql"] = descendants(postmaster)
    assert cluster.redis.proc is not None
    groups["redis"] = [cluster.redis.proc.pid]
    return groups


def group_cpu(groups: Dict[str, List[int]]) -> Dict[str, float]:
    return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}


def shared_counters(cluster: Cluster) -> Dict[str, float]:
    """Redis commands and PostgreSQL transactions so far, and PostgreSQL's connections now."""
    import redis
    import sqlalchemy as sa

    client = redis.Redis.from_url(cluster.redis.url)
    try:
        commands = float(client.info("stats")["total_commands_processed"])
    finally:
        client.close()
    engine = sa.create_engine(cluster.postgres.url)
    try:
        with engine.connect() as connection:
            transactions = float(connection.execute(sa.text(
                "SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database")).scalar() or 0)
            connections = float(connection.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")).scalar() or 0)
    finally:
        engine.dispose()
    return {"redis_commands": commands, "postgres_transactions": transactions, "postgres_connections": connections}


def load(url: str, users: int, args: argparse.Namespace, seed: int) -> Dict:
    command = [str(servers.BIN / "python"), "bench/loadgen.py", "--url", url, "--users", str(users),
               "--duration", str(args.duration), "--warmup", str(args.warmup), "--seed", str(seed)]
    done = subprocess.run(command, cwd=ROOT, env=servers.base_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, timeout=args.duration + args.warmup + 180, check=True)
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lakala-bench-cluster-"))
    model = ROOT / "models" / "lakala.tar.gz"
    action_port, rasa_port = servers.free_port(), servers.free_port()
    actions = servers.start_action_server(work, action_port)
    endpoints, credentials = servers.write_serving_files(work, action_port, stock=False)
    single = servers.start_rasa(model, endpoints, credentials, rasa_port, work / "tracker.db", work / "rasa.log")
    cluster = Cluster(work, replicas=args.replicas, extra_env=dict(servers.base_env())).start()
    runs: Dict[str, List[Dict]] = {"one process": [], f"cluster of {args.replicas}": []}
    try:
        servers.time_to_first_answer(single, time.monotonic(), rasa_port, 600, work / "rasa.log", "你好")
        targets = {"one process": f"http://127.0.0.1:{rasa_port}", f"cluster of {args.replicas}": cluster.url}
        for run in range(1, args.runs + 1):
            order = list(targets) if run % 2 else list(reversed(targets))
            for name in order:
                groups = components(cluster) if name.startswith("cluster") else {}
                counters = shared_counters(cluster) if groups else {}
                before, wall = group_cpu(groups), time.monotonic()
                result = load(targets[name], args.users, args, seed=run)
                elapsed = time.monotonic() - wall
                after = group_cpu(components(cluster)) if groups else {}
                result["cpu_share_of_a_core"] = {
                    part: round((after[part] - before.get(part, 0.0)) / elapsed, 3) for part in after}
                if groups:
                    now = shared_counters(cluster)
                    handled = max(1, result["messages"] * (args.duration + args.warmup) / args.duration)
                    result["per_message"] = {
                        "redis_commands": round((now["redis_commands"] - counters["redis_commands"]) / handled, 1),
                        "postgres_transactions": round(
                            (now["postgres_transactions"] - counters["postgres_transactions"]) / handled, 1)}
                    result["postgres_connections_after"] = now["postgres_connections"]
                runs[name].append(result)
                print(f"run {run}: {name}: {result['msg_per_s']} msg/s, p95 {result['p95_ms']} ms, "
                      f"{result['errors']} errors, {result['empty']} empty; CPU {result['cpu_share_of_a_core']}",
                      flush=True)
    finally:
        cluster.stop()
        servers.stop(single)
        servers.stop(actions)

    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "msg_per_s": statistics.median(r["msg_per_s"] for r in results),
            "p95_ms": statistics.median(r["p95_ms"] for r in results),
            "errors": sum(r["errors"] for r in results), "empty": sum(r["empty"] for r in results),
        }
        shares = [r["cpu_share_of_a_core"] for r in results if r["cpu_share_of_a_core"]]
        if shares:
            summary[name]["cpu_share_of_a_core"] = {
                part: round(statistics.median(s[part] for s in shares), 3) for part in shares[0]}
            summary[name]["per_message"] = {
                key: statistics.median(r["per_message"][key] for r in results) for key in results[0]["per_message"]}
            summary[name]["postgres_connections"] = max(r["postgres_connections_after"] for r in results)
    one, many = summary["one process"], summary[f"cluster of {args.replicas}"]
    ratio = round(many["msg_per_s"] / one["msg_per_s"], 2) if one["msg_per_s"] else None
    report = {"users": args.users, "runs": args.runs, "duration_s": args.duration, "cpus": os.cpu_count(),
              "summary": summary, "ratio": ratio, "raw": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    lines = [f"# Cluster beside one process: {args.users} users, median of {args.runs} runs, "
             f"{os.cpu_count()} cores", "",
             "| | msg/s | p95 ms | errors | empty |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {s['msg_per_s']} | {s['p95_ms']} | {s['errors']} | {s['empty']} |"
              for name, s in summary.items()]
    lines += ["", f"Cluster / one process: **{ratio}×**", "", "CPU during the cluster's load (share of one core):", ""]
    lines += [f"- {part}: {share}" for part, share in many.get("cpu_share_of_a_core", {}).items()]
    lines += ["", f"Per message handled: {many.get('per_message')}; PostgreSQL client connections open: "
              f"{many.get('postgres_connections')}"]
    (args.out / "cluster.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
