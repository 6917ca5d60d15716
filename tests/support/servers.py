"""Starts the real Rasa server and action server the way `make run` does, on free
ports and private databases, for end-to-end tests."""
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
MODEL = ROOT / "models" / "lakala.tar.gz"
DOMAIN = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))
POLICY_VALUES = {
    name: str(slot["initial_value"])
    for name, slot in DOMAIN["slots"].items()
    if name.startswith("policy_")
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render(response: str, **values: Any) -> str:
    """The text the bot should send for a domain response, filled like Rasa does."""
    template = DOMAIN["responses"][response][0]["text"]
    merged = {**POLICY_VALUES, **{k: str(v) for k, v in values.items()}}
    return re.sub(r"\{(\w+)\}", lambda m: merged.get(m.group(1), m.group(0)), template)


class Process:
    def __init__(self, name: str, args: List[str], env: Dict[str, str], log_dir: Path, url: str):
        self.name, self.args, self.env, self.url = name, args, env, url
        self.log_path = log_dir / f"{name}.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 180) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not start within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


class Bot:
    """A running bot: both servers, their databases, and a REST client."""

    def __init__(
        self, workdir: Path, extra_env: Optional[Dict[str, str]] = None, credentials: Optional[Path] = None,
        debug: bool = False,
    ):
        self.workdir = workdir
        self.rasa_port, self.action_port = free_port(), free_port()
        self.terminal_db = workdir / "terminals.db"
        env = dict(os.environ)
        env.update(
            TERMINAL_DB_URL=f"sqlite:///{self.terminal_db}",
            TRACKER_DB_URL=f"sqlite:///{workdir / 'tracker.db'}",
            TF_CPP_MIN_LOG_LEVEL="2",
            SQLALCHEMY_SILENCE_UBER_WARNING="1",
            SEED_DEMO_TERMINALS="1",  # a configured database gets the demo terminals only when asked
            ACTION_SERVER_TOKEN=secrets.token_urlsafe(24),
            VERIFICATION_SECRET=secrets.token_urlsafe(24),
            WEB_SESSION_SECRET=secrets.token_urlsafe(24),
            # Agents around the clock unless a test says otherwise: answers do not depend on the hour.
            SERVICE_HOURS="00:00-24:00",
            SERVICE_DAYS="daily",
        )
        env.update(extra_env or {})
        self.env = env
        self.action_token = env["ACTION_SERVER_TOKEN"]
        endpoints = workdir / "endpoints.yml"
        endpoints.write_text(
            yaml.safe_dump(
                {
                    "action_endpoint": {
                        "url": f"http://127.0.0.1:{self.action_port}/webhook", "token": self.action_token,
                    },
                    "tracker_store": {"type": "lakala_server.tracker_store.UrlSQLTrackerStore"},
                    "lock_store": {"type": "lakala_server.lock_store.ConversationLockStore"},
                }
            )
        )
        self.actions = Process(
            "actions",
            [str(BIN / "python"), "-m", "actions.server", "--port", str(self.action_port)],
            env, workdir, f"http://127.0.0.1:{self.action_port}/health",
        )
        self.rasa = Process(
            "rasa",
            [str(BIN / "rasa"), "run", "--model", str(MODEL), "--endpoints", str(endpoints),
             "--credentials", str(credentials or ROOT / "credentials.yml"), "--port", str(self.rasa_port)]
            + (["--debug"] if debug else []),
            env, workdir, f"http://127.0.0.1:{self.rasa_port}/",
        )

    def start(self) -> "Bot":
        self.actions.start()
        self.rasa.start()
        return self

    def stop(self) -> None:
        self.rasa.stop()
        self.actions.stop()

    def send(self, sender: str, text: Any, timeout: float = 30) -> List[Dict[str, Any]]:
        body = json.dumps({"sender": sender, "message": text}, ensure_ascii=False).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.rasa_port}/webhooks/rest/webhook",
            data=body, headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def texts(self, sender: str, text: Any) -> List[str]:
        return [message.get("text", "") for message in self.send(sender, text)]
