"""Starts and stops the real action server and Rasa server for the benchmark, each in its own
process group on a free local port, the same way tests/support/servers.py does for the tests."""
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from bench.loadgen import FAILURE_TEXTS

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
CREDENTIALS = ROOT / "credentials.yml"
TRACKER_STORE = "lakala_server.tracker_store.UrlSQLTrackerStore"
SHELLS = {"sh", "bash", "dash", "zsh"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# One action-server token and verification secret for the whole benchmark run.
ACTION_TOKEN = secrets.token_urlsafe(24)
VERIFICATION_SECRET = secrets.token_urlsafe(24)
WEB_SESSION_SECRET = secrets.token_urlsafe(24)


def base_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        ACTION_SERVER_TOKEN=ACTION_TOKEN,
        VERIFICATION_SECRET=VERIFICATION_SECRET,
        WEB_SESSION_SECRET=WEB_SESSION_SECRET,
        RASA_TELEMETRY_ENABLED="false",
        TF_CPP_MIN_LOG_LEVEL="2",
        SQLALCHEMY_SILENCE_UBER_WARNING="1",
        TQDM_DISABLE="1",
    )
    env.update(extra)
    return env


def start(args: List[str], env: Dict[str, str], log_path: Path) -> subprocess.Popen:
    """Starts a command in a new process group (so it can be stopped with all its children)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: Optional[subprocess.Popen]) -> None:
    """Stops the process group a process leads: SIGTERM, then SIGKILL after 20 s."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_http(proc: subprocess.Popen, url: str, timeout: float, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log_path}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s; see {log_path}")


def start_action_server(workdir: Path, port: int) -> subprocess.Popen:
    """The repo's action server with a fresh terminal database in workdir."""
    db = workdir / "terminals.db"
    db.unlink(missing_ok=True)
    env = base_env(TERMINAL_DB_URL=f"sqlite:///{db}", SEED_DEMO_TERMINALS="1")
    log_path = workdir / "actions.log"
    proc = start([str(BIN / "python"), "-m", "actions.server", "--port", str(port)], env, log_path)
    try:
        wait_http(proc, f"http://127.0.0.1:{port}/health", 180, "action server", log_path)
    except Exception:
        stop(proc)
        raise
    return proc


def write_serving_files(workdir: Path, action_port: int, stock: bool) -> Tuple[Path, Path]:
    """endpoints.yml and credentials.yml for `rasa run`.

    Ours is served as `make run` serves it: the repo's channels and its SQL tracker store
    (which also load lakala_server's speed-ups). A stock peer is served as Rasa serves any
    project out of the box: Rasa's REST channel and the default in-memory tracker store.
    Both use the same action server."""
    endpoints: Dict[str, Any] = {
        "action_endpoint": {"url": f"http://127.0.0.1:{action_port}/webhook", "token": ACTION_TOKEN}
    }
    credentials = workdir / "credentials.yml"
    if stock:
        credentials.write_text("rest:\n", encoding="utf-8")
    else:
        endpoints["tracker_store"] = {"type": TRACKER_STORE}
        credentials = CREDENTIALS
    path = workdir / "endpoints.yml"
    path.write_text(yaml.safe_dump(endpoints), encoding="utf-8")
    return path, credentials


def start_rasa(model: Path, endpoints: Path, credentials: Path, port: int, tracker_db: Path,
               log_path: Path) -> subprocess.Popen:
    """`rasa run` on the model with a fresh tracker database; returns at once (no readiness wait)."""
    tracker_db.unlink(missing_ok=True)
    env = base_env(TRACKER_DB_URL=f"sqlite:///{tracker_db}")
    args = [str(BIN / "rasa"), "run", "--model", str(model), "--endpoints", str(endpoints),
            "--credentials", str(credentials), "--port", str(port)]
    return start(args, env, log_path)


def post_message(port: int, sender: str, text: str, timeout: float = 10) -> list:
    body = json.dumps({"sender": sender, "message": text}, ensure_ascii=False).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/rest/webhook", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def time_to_first_answer(proc: subprocess.Popen, started: float, port: int, timeout: float,
                         log_path: Path, text: str = "你好") -> float:
    """Seconds from `started` (taken just before Popen) until the REST channel first answers
    `text` with a real answer (not empty, not the backend-failure apology); polls every 0.25 s."""
    deadline = started + timeout
    sender = f"bench-first-{port}-{int(started)}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rasa server exited with {proc.returncode}; see {log_path}")
        try:
            texts = [m.get("text") or "" for m in post_message(port, sender, text, timeout=5)]
            if any(texts) and not any(t.strip() in FAILURE_TEXTS for t in texts):
                return time.monotonic() - started
        except (OSError, ValueError, urllib.error.HTTPError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"rasa server gave no answer within {timeout:.0f} s; see {log_path}")


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _children(pid: int) -> List[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def server_pid(proc: subprocess.Popen) -> int:
    """The pid of the Python process serving Rasa: Popen's pid unless that is a shell wrapper."""
    pid = proc.pid
    while _comm(pid) in SHELLS:
        children = _children(pid)
        if not children:
            break
        pid = children[0]
    return pid


def peak_memory_mb(pid: int) -> float:
    """VmHWM (peak resident set size) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def describe_process(pid: int) -> str:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return f"{_comm(pid)}: " + " ".join(Path(c.decode()).name if i < 2 else c.decode()
                                        for i, c in enumerate(cmdline[:3]) if c)
