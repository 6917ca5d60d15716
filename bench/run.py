"""Benchmark: trains several Rasa configurations on exactly the same domain.yml and data/,
then measures each the same way on this machine and writes a report.

    .venv/bin/python bench/run.py                      # all configs (slow: ~40 min)
    .venv/bin/python bench/run.py --configs ours,peer_b --model ours=models/lakala.tar.gz

Per config: training time (`rasa train`, median of BENCH_TRAIN_RUNS, default 1) and NLU scores
on tests/nlu_test.yml (bench/nlu_eval.py in a subprocess; with several trainings, the median of
each training's scores). Then BENCH_RUNS rounds (default 3), each running every config once in
turn: a fresh `rasa run` next to the config's action server, time to first answer, closed-loop
load (bench/loadgen.py) at each of BENCH_USERS (default 1,10,50), and the server's peak memory.
Writes latest.md, latest.json (every run), latest.png and headline.md to --out.
A config that fails to train is recorded as "does not train" with the reason.
"""
import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import report, servers  # noqa: E402

CONFIGS = {
    "peer_a": Path("bench/configs/peer_a.yml"),
    "peer_a_en": Path("bench/configs/peer_a_en.yml"),
    "peer_b": Path("bench/configs/peer_b.yml"),
    "ours": Path("config.yml"),
}
NLU_TEST = Path("tests/nlu_test.yml")
BLIND_SET = Path("tests/blind/blind_set.tsv")
DEV_SET = ROOT.parent / "shared" / "eval"
FIRST_MESSAGE = "你好"
FIRST_ANSWER_TIMEOUT_S = 300
TRAIN_TIMEOUT_S = 3600


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


def relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def median(values: List[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# --- training -----------------------------------------------------------------------------

def failure_reason(log_path: Path) -> str:
    """The last exception line of a training log, without the module path."""
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in reversed(lines):
        match = re.match(r"^(?:[\w.]+\.)?(\w+(?:Exception|Error)): (.+)$", line.strip())
        if match:
            return f"{match.group(1)}: {match.group(2)}"[:300]
    return (lines[-1].strip() if lines else "no output")[:300]


def train_once(name: str, config: Path, workdir: Path, attempt: int) -> Dict[str, Any]:
    log_path = workdir / f"train-{attempt}.log"
    # Rasa writes an auto-configured pipeline and an assistant id back into a config that
    # lacks them (the `rasa init` one): train on a copy so the repo's file stays as it is.
    work_config = workdir / "config.yml"
    shutil.copyfile(config, work_config)
    args = [str(servers.BIN / "rasa"), "train", "--config", str(work_config), "--domain", "domain.yml",
            "--data", "data", "--out", str(workdir), "--fixed-model-name", name, "--force"]
    # No training cache: every config is trained cold, and the shared .rasa/cache is left alone.
    env = servers.base_env(RASA_MAX_CACHE_SIZE="0")
    started = time.monotonic()
    with open(log_path, "wb") as out:
        done = subprocess.run(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=TRAIN_TIMEOUT_S, check=False)
    seconds = time.monotonic() - started
    model = workdir / f"{name}.tar.gz"
    if done.returncode != 0 or not model.exists():
        return {"ok": False, "seconds": round(seconds, 1), "reason": failure_reason(log_path),
                "log": relative(log_path)}
    return {"ok": True, "seconds": round(seconds, 1), "log": relative(log_path)}


def train(name: str, config: Path, workdir: Path, runs: int) -> List[Dict[str, Any]]:
    """Trains `runs` times. With more than one run, each trained model is scored on the NLU
    test set before the next training replaces it (models with random initialisation, like
    DIET, score differently from one training to the next)."""
    attempts = []
    for attempt in range(1, runs + 1):
        log(f"{name}: training {attempt}/{runs} with {relative(config)} ...")
        result = train_once(name, config, workdir, attempt)
        log(f"{name}: " + (f"trained in {result['seconds']} s" if result["ok"] else f"failed: {result['reason']}"))
        attempts.append(result)
        if not result["ok"]:
            break
        if runs > 1:
            result["nlu"] = evaluate_nlu(name, workdir / f"{name}.tar.gz", workdir)
    return attempts


def median_nlu(attempts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per-metric medians of the NLU scores of several trainings."""
    scores = [a["nlu"] for a in attempts if a.get("nlu")]
    numeric = [k for k, v in scores[0].items() if isinstance(v, int | float)]
    merged = {k: median([s[k] for s in scores]) for k in numeric}
    merged["trainings_scored"] = len(scores)
    return merged


# --- NLU ----------------------------------------------------------------------------------

def score_file(model: Path, nlu: Path, workdir: Path) -> Dict[str, Any]:
    out = workdir / "nlu.json"
    out.unlink(missing_ok=True)
    with open(workdir / "nlu.log", "wb") as log_file:
        subprocess.run([str(servers.BIN / "python"), "bench/nlu_eval.py", "--model", str(model),
                        "--nlu", str(nlu), "--out", str(out)],
                       cwd=ROOT, env=servers.base_env(), stdout=log_file, stderr=subprocess.STDOUT,
                       timeout=1800, check=True)
    return json.loads(out.read_text(encoding="utf-8"))


def evaluate_nlu(name: str, model: Path, workdir: Path) -> Dict[str, Any]:
    """Scores on the test set, and on the blind set (keys prefixed blind_), written by
    people who never saw data/."""
    log(f"{name}: scoring NLU on {NLU_TEST} and {BLIND_SET} ...")
    result = score_file(model, NLU_TEST, workdir)
    blind = score_file(model, BLIND_SET, workdir)
    for key in ("intent_accuracy", "label_accuracy", "confident_error_rate", "macro_f1"):
        result[f"blind_{key}"] = blind[key]
    log(f"{name}: intent accuracy {result['intent_accuracy']:.3f}, macro F1 {result['macro_f1']:.3f}, "
        f"blind intent accuracy {blind['intent_accuracy']:.3f}")
    return result


def dev_answers(name: str, port: int, workdir: Path) -> Tuple[Optional[float], Optional[float]]:
    """The share of right first answers on the merchant dev set (../shared/eval), scored by
    its own checker against the running server; None when the set is not there."""
    checker = DEV_SET / "answer_check.py"
    if not checker.exists():
        log(f"{name}: {checker} not found; dev set not scored")
        return None, None
    run = subprocess.run([sys.executable, str(checker), "--url", f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=1800)
    (workdir / f"{name}-dev-answers.txt").write_text(run.stdout, encoding="utf-8")
    match = re.search(r"answers: (\d+)/(\d+) = ([0-9.]+)", run.stdout)
    if not match:
        log(f"{name}: dev-set answers not scored")
        return None, None
    rate, total = float(match.group(3)), int(match.group(2))
    # A miss is confident when the reply is an answer, not "did you mean", an apology or a
    # request to rephrase or to write in Chinese.
    unsure = unsure_openings()
    misses = [line.split(" -> ", 1)[-1] for line in run.stdout.splitlines() if line.startswith("miss ")]
    confident = sum(not miss.startswith(unsure) for miss in misses) / total if total else None
    log(f"{name}: dev-set answers {rate}, confident errors {confident}")
    return rate, confident


UNSURE_RESPONSES = ("utter_clarify", "utter_ask_rephrase", "utter_default", "utter_chinese_only")


def unsure_openings() -> Tuple[str, ...]:
    """The first 20 characters of each unsure response's text (the checker shortens replies)."""
    import yaml

    responses = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))["responses"]
    return tuple(responses[name][0]["text"][:20] for name in UNSURE_RESPONSES)


# --- servers and load ---------------------------------------------------------------------

def run_load(name: str, port: int, users: int, args: argparse.Namespace, seed: int, workdir: Path) -> Dict:
    command = [str(servers.BIN / "python"), "bench/loadgen.py", "--url", f"http://127.0.0.1:{port}",
               "--users", str(users), "--duration", str(args.duration), "--warmup", str(args.warmup),
               "--seed", str(seed), "--sender-per", args.sender_per]
    with open(workdir / "loadgen.log", "ab") as errors:
        done = subprocess.run(command, cwd=ROOT, env=servers.base_env(), stdout=subprocess.PIPE,
                              stderr=errors, timeout=args.warmup + args.duration + 120, check=True)
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    log(f"{name}: {users} users: {result['msg_per_s']} msg/s, p95 {result['p95_ms']} ms, "
        f"{result['errors']} errors, {result['empty']} empty, {result['wrong_lookups']} wrong lookups")
    return result


def server_run(name: str, model: Path, serving: Tuple[Path, Path], workdir: Path, run: int,
               args: argparse.Namespace) -> Dict[str, Any]:
    """One fresh `rasa run`: time to first answer, load at every user level, peak memory."""
    port = servers.free_port()
    log_path = workdir / f"rasa-{run}.log"
    started = time.monotonic()
    endpoints, credentials = serving
    proc = servers.start_rasa(model, endpoints, credentials, port, workdir / f"tracker-{run}.db", log_path)
    try:
        first = servers.time_to_first_answer(proc, started, port, FIRST_ANSWER_TIMEOUT_S, log_path, FIRST_MESSAGE)
        log(f"{name}: run {run}: first answer after {first:.1f} s")
        loads = [run_load(name, port, users, args, seed=run, workdir=workdir) for users in args.users]
        pid = servers.server_pid(proc)
        # Answers on the dev set once per config, after the load (so it does not warm the server).
        dev, dev_confident = dev_answers(name, port, workdir) if run == 1 else (None, None)
        return {"first_answer_s": round(first, 2), "peak_memory_mb": round(servers.peak_memory_mb(pid), 1),
                "server_process": servers.describe_process(pid), "load": loads, "dev_answers": dev,
                "dev_confident_error_rate": dev_confident}
    finally:
        servers.stop(proc)


def start_action_servers(names: List[str], args: argparse.Namespace,
                         raws: Dict[str, Dict[str, Any]]) -> Dict[str, Tuple[Any, Tuple[Path, Path]]]:
    """One action server per config, each with the serving files for that config."""
    started: Dict[str, Tuple[Any, Tuple[Path, Path]]] = {}
    for name in names:
        workdir = args.work / name
        try:
            action_port = servers.free_port()
            log(f"{name}: starting the action server ...")
            actions = servers.start_action_server(workdir, action_port)
            serving = servers.write_serving_files(workdir, action_port, stock=name != "ours")
            started[name] = (actions, serving)
        except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as error:
            raws[name]["problems"].append(f"server benchmark failed: {error}")
    return started


def serve_interleaved(models: Dict[str, Path], raws: Dict[str, Dict[str, Any]], args: argparse.Namespace,
                      on_progress) -> None:
    """BENCH_RUNS rounds of fresh servers. Every round runs each config once, and each round
    starts with a different config, so a shared machine that slows down or speeds up during
    the benchmark weighs on every config alike instead of on whichever came last."""
    names = list(models)
    started = start_action_servers(names, args, raws)
    try:
        for run in range(1, args.runs + 1):
            shift = (run - 1) % len(names) if names else 0
            for name in names[shift:] + names[:shift]:
                if name not in started:
                    continue
                serving = started[name][1]
                try:
                    raws[name]["server_runs"].append(
                        server_run(name, models[name], serving, args.work / name, run, args))
                except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as error:
                    raws[name]["problems"].append(f"server benchmark failed: {error}")
                    servers.stop(started.pop(name)[0])
                on_progress()
    finally:
        for actions, _ in started.values():
            servers.stop(actions)


# --- one config ---------------------------------------------------------------------------

def prepare_config(name: str, args: argparse.Namespace) -> Tuple[Dict[str, Any], Optional[Path]]:
    """Training (unless a model is given) and NLU scores; the model to serve, if there is one."""
    config = ROOT / CONFIGS[name]
    workdir = args.work / name
    workdir.mkdir(parents=True, exist_ok=True)
    raw: Dict[str, Any] = {"config": relative(config),
                           "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest()[:12]}
    given = args.models.get(name)
    if given:
        model = given
        raw["train"] = []
    else:
        raw["train"] = train(name, config, workdir, args.train_runs)
        model = workdir / f"{name}.tar.gz"
        if not raw["train"][-1]["ok"]:
            return raw, None
    raw["model"] = relative(model)
    raw["problems"] = []
    raw["server_runs"] = []
    try:
        scored = [a for a in raw["train"] if a.get("nlu")]
        raw["nlu"] = median_nlu(scored) if scored else evaluate_nlu(name, model, workdir)
    except (subprocess.SubprocessError, OSError, ValueError) as error:
        raw["problems"].append(f"NLU scoring failed ({error}); see {relative(workdir / 'nlu.log')}")
    return raw, model


def summarize(raw: Dict[str, Any], model_given: bool) -> Dict[str, Any]:
    """Medians over runs of everything the report shows."""
    train = raw.get("train") or []
    if train and not train[-1]["ok"]:
        return {"status": "failed_training", "reason": train[-1]["reason"]}
    runs = raw.get("server_runs") or []
    nlu = {k: v for k, v in (raw.get("nlu") or {}).items() if isinstance(v, int | float)} or None
    dev = next((r for r in runs if r.get("dev_answers") is not None), None)
    if dev is not None:
        nlu = {**(nlu or {}), "dev_answers": dev["dev_answers"],
               "dev_confident_error_rate": dev.get("dev_confident_error_rate")}
    return {
        "status": "error" if raw.get("problems") else "ok",
        "model_given": model_given,
        "model": raw.get("model"),
        "problems": raw.get("problems") or [],
        "train_s": median([t["seconds"] for t in train]),
        "nlu": nlu,
        "first_answer_s": median([r["first_answer_s"] for r in runs]),
        "peak_memory_mb": median([r["peak_memory_mb"] for r in runs]),
        "load": summarize_load(runs),
    }


def summarize_load(runs: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    by_users: Dict[str, List[Dict[str, Any]]] = {}
    for run in runs:
        for result in run["load"]:
            by_users.setdefault(str(result["users"]), []).append(result)
    summary = {}
    for users, results in by_users.items():
        keys = ("messages", "msg_per_s", "p50_ms", "p95_ms", "p99_ms", "errors", "empty", "wrong_lookups",
                "wrong_faq_answers")
        summary[users] = {k: median([r.get(k) for r in results]) for k in keys}
        for k in ("errors", "empty", "wrong_lookups", "wrong_faq_answers"):
            summary[users][f"{k}_all_runs"] = sum(r.get(k) or 0 for r in results)
    return summary


# --- machine and report -------------------------------------------------------------------

def machine() -> Dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu.group(1).strip() if cpu else platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "mem_total_gb": int(mem.group(1)) / 1024 / 1024 if mem else 0.0,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "rasa": rasa_version(),
        "git": git_revision(),
    }


def rasa_version() -> str:
    code = "import importlib.metadata as m; print(m.version('rasa'))"
    done = subprocess.run([str(servers.BIN / "python"), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def git_revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    return revision + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def save(result: Dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")


# --- command line -------------------------------------------------------------------------

def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--runs", type=int, default=env_int("BENCH_RUNS", 3), help="server runs (env BENCH_RUNS)")
    parser.add_argument("--train-runs", type=int, default=env_int("BENCH_TRAIN_RUNS", 1),
                        help="trainings per config, median reported (env BENCH_TRAIN_RUNS)")
    parser.add_argument("--users", default=os.environ.get("BENCH_USERS") or "1,10,50",
                        help="concurrent user levels (env BENCH_USERS)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per load test")
    parser.add_argument("--warmup", type=float, default=3.0, help="uncounted seconds before each load test")
    parser.add_argument("--sender-per", choices=("user", "conversation"), default="conversation",
                        help="load: a new sender id per conversation (default) or one per virtual user per run")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="use this trained model for NAME instead of training (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the report goes")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work", help="scratch: models, databases, logs")
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or not args.configs:
        parser.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    args.users = [int(u) for u in args.users.split(",") if u.strip()]
    if args.runs < 1 or args.train_runs < 1 or not args.users or min(args.users) < 1:
        parser.error("--runs, --train-runs and every --users level must be >= 1")
    args.models = parse_models(parser, args.model)
    args.out, args.work = (ROOT / args.out).resolve(), (ROOT / args.work).resolve()
    return args


def parse_models(parser: argparse.ArgumentParser, items: List[str]) -> Dict[str, Path]:
    models = {}
    for item in items:
        name, _, path = item.partition("=")
        model = (ROOT / path).resolve()
        if name not in CONFIGS or not path:
            parser.error(f"--model wants NAME=PATH with NAME in {', '.join(CONFIGS)}: {item}")
        if not model.is_file():
            parser.error(f"--model {item}: no such file")
        models[name] = model
    return models


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    result: Dict[str, Any] = {
        "meta": machine(),
        "settings": {"configs": args.configs, "runs": args.runs, "train_runs": args.train_runs,
                     "users": args.users, "duration": args.duration, "warmup": args.warmup,
                     "sender_per": args.sender_per,
                     "models": {k: relative(v) for k, v in args.models.items()}},
        "configs": {}, "summary": {},
    }
    log(f"benchmarking {', '.join(args.configs)}; report in {relative(args.out)}")

    def progress() -> None:
        for name, raw in result["configs"].items():
            result["summary"][name] = summarize(raw, name in args.models)
        save(result, args.out)  # keep what is done if a later step is interrupted

    models: Dict[str, Path] = {}
    for name in args.configs:
        result["configs"][name], model = prepare_config(name, args)
        if model is not None:
            models[name] = model
        progress()
    serve_interleaved(models, result["configs"], args, progress)
    progress()
    report.write_all(result, args.out)
    log(f"wrote {relative(args.out / 'latest.md')}, latest.json, latest.png, headline.md")
    failed = [n for n, s in result["summary"].items() if s.get("status") == "error"]
    if failed:
        log(f"harness problems with: {', '.join(failed)} (see latest.md)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
