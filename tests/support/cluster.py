"""The cluster as `make cluster` starts it (scripts/cluster.py under supervisord, nginx in
front), on free ports, with a PostgreSQL and a Redis server of its own that a test may restart
without disturbing anything else on the machine. Also: a load of REST clients that retry with
the same message id, and the audit of what the tracker store holds afterwards."""
from __future__ import annotations

import asyncio
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import aiohttp
import sqlalchemy as sa

from tests.support.servers import BIN, ROOT, free_port

TEST_ID_KEY = "test_id"
MESSAGE_ID_KEY = "message_id"


def _ports_free(ports: Sequence[int]) -> bool:
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_range(count: int) -> int:
    """The first of `count` consecutive free ports."""
    for _ in range(200):
        base = free_port()
        if base + count < 65000 and _ports_free(range(base, base + count)):
            return base
    raise RuntimeError("no free range of ports")


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).read()
        return True
    except OSError:
        return False


class PrivatePostgres:
    """A PostgreSQL server in a temporary directory, run as the `postgres` user when this is root."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL's initdb is not installed (make services installs it)")
        self.bin = Path(found[-1]).parent
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lakala-pg-"))
        self.data = self.dir / "data"
        self.as_user: List[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True)

    def _ctl(self, action: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", "-m", "fast",
                  action)

    def start(self) -> PrivatePostgres:
        self._ctl("start")
        return self

    def restart(self) -> None:
        self._ctl("restart")

    def stop(self) -> None:
        try:
            self._ctl("stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A Redis server in a temporary directory that keeps its data across a restart (AOF), as a
    production Redis does."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lakala-redis-"))
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_for(lambda: subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True)
                 .stdout.strip() == b"PONG", 20, "Redis start")
        return self

    def restart(self) -> None:
        self.stop(keep_data=True)
        self.start()

    def stop(self, keep_data: bool = False) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)  # Redis finishes its AOF and exits
            self.proc.wait(timeout=20)
            self.proc = None
        if not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """scripts/cluster.py with its own ports, directory, PostgreSQL and Redis."""

    def __init__(self, workdir: Path, replicas: int = 2, action_servers: int = 2,
                 extra_env: Optional[Dict[str, str]] = None) -> None:
        self.workdir = workdir
        self.replicas, self.action_servers = replicas, action_servers
        self.postgres = PrivatePostgres().start()
        self.redis = PrivateRedis().start()
        base = free_port_range(replicas + action_servers + 3)
        self.rasa_port, self.action_port, self.web_port = base, base + 1, base + 2
        self.replica_base_port, self.action_base_port = base + 3, base + 3 + replicas
        self.env = {
            **os.environ,
            "CLUSTER_DIR": str(workdir / "cluster"),
            "RASA_REPLICAS": str(replicas), "ACTION_SERVERS": str(action_servers),
            "RASA_PORT": str(self.rasa_port), "ACTION_PORT": str(self.action_port), "WEB_PORT": str(self.web_port),
            "REPLICA_BASE_PORT": str(self.replica_base_port), "ACTION_BASE_PORT": str(self.action_base_port),
            "LISTEN_HOST": "127.0.0.1", "CLUSTER_WEB": "0",
            "TRACKER_DB_URL": self.postgres.url, "TERMINAL_DB_URL": self.postgres.url,
            "REDIS_URL": self.redis.url, "SEED_DEMO_TERMINALS": "1",
            "ACTION_SERVER_TOKEN": secrets.token_hex(16), "VERIFICATION_SECRET": secrets.token_hex(16),
            "WEB_SESSION_SECRET": secrets.token_hex(16), "PHONE_TAIL_KEY": secrets.token_hex(16),
            "RATE_LIMIT_PER_MINUTE": "100000",
            **(extra_env or {}),
        }
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rasa_port}"

    @property
    def conf(self) -> Path:
        return self.workdir / "cluster" / "supervisord.conf"

    def start(self, timeout: float = 600) -> Cluster:
        self.log = open(self.workdir / "cluster.log", "ab")
        self.proc = subprocess.Popen([str(BIN / "python"), "scripts/cluster.py"], cwd=ROOT, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: self.proc.poll() is not None or b"cluster is running" in
                     (self.workdir / "cluster.log").read_bytes(), timeout, "the cluster's start")
            if self.proc.poll() is not None:
                raise RuntimeError(f"the cluster exited; see {self.workdir / 'cluster.log'}")
        except BaseException:
            self.stop()
            raise
        return self

    def ctl(self, *args: str) -> str:
        done = subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=120)
        return done.stdout

    def pid(self, program: str) -> int:
        return int(self.ctl("pid", program).strip())

    def replica_port(self, n: int) -> int:
        return self.replica_base_port + n

    def action_server_port(self, n: int) -> int:
        return self.action_base_port + n

    def wait_healthy(self, timeout: float = 300) -> None:
        urls = [f"http://127.0.0.1:{self.replica_port(n)}/" for n in range(self.replicas)]
        urls += [f"http://127.0.0.1:{self.action_server_port(n)}/health" for n in range(self.action_servers)]
        wait_for(lambda: all(answers(url) for url in urls), timeout, "every process answering")

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
        finally:
            self.redis.stop()
            self.postgres.stop()


# What the merchants say during a load: questions, and a lookup that calls the action server.
SCRIPT = ["押金能退吗", "帮我查一下终端状态", "30091254", "违约金怎么算", "沉睡是什么意思", "怎么注销账户"]


@dataclass
class Sent:
    sender: str
    index: int
    message_id: str
    attempts: int = 0
    replies: List[Dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # from the first attempt to the answer
    first_attempt_failed: bool = False


@dataclass
class Load:
    """`senders` REST clients through nginx, each sending `messages` in order; a client retries a
    message with the same message id until it is answered (transport error, 5xx, timeout)."""

    url: str
    senders: int
    messages: int
    tag: str
    pause: float = 0.05
    timeout: float = 10.0
    max_attempts: int = 60
    sent: List[Sent] = field(default_factory=list)

    def sender(self, n: int) -> str:
        return f"{self.tag}-{n}"

    async def _one(self, session: aiohttp.ClientSession, item: Sent, text: str) -> None:
        started = time.monotonic()
        body = {"sender": item.sender, "message": text,
                "metadata": {MESSAGE_ID_KEY: item.message_id, TEST_ID_KEY: item.message_id}}
        while item.attempts < self.max_attempts:
            item.attempts += 1
            try:
                async with session.post(f"{self.url}/webhooks/rest/webhook", json=body,
                                        timeout=aiohttp.ClientTimeout(total=self.timeout)) as answer:
                    if answer.status == 200:
                        item.replies = await answer.json()
                        item.seconds = time.monotonic() - started
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            item.first_attempt_failed = True
            await asyncio.sleep(min(2.0, 0.2 * item.attempts))
        raise AssertionError(f"{item.message_id} never answered after {item.attempts} attempts")

    async def _client(self, session: aiohttp.ClientSession, n: int) -> None:
        for index in range(self.messages):
            item = Sent(self.sender(n), index, f"{self.tag}-{n}-{index}")
            self.sent.append(item)
            await self._one(session, item, SCRIPT[index % len(SCRIPT)])
            await asyncio.sleep(self.pause)

    async def run(self) -> Load:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self._client(session, n) for n in range(self.senders)))
        return self


def audit(db_url: str, load: Load) -> Dict[str, int]:
    """The counts for a REST load (see `audit_messages`)."""
    row = audit_messages(db_url, load.tag, [item.message_id for item in load.sent])
    row["retried"] = sum(1 for item in load.sent if item.first_attempt_failed)
    return row


def audit_messages(db_url: str, tag: str, sent: Sequence[str]) -> Dict[str, int]:
    """lost = sent − stored, duplicated = stored − unique, reordered = order inversions per
    conversation, counted from the user messages the tracker store holds whose test id (ids are
    `<tag>-<client>-<index>`) belongs to this run, on any channel."""
    engine = sa.create_engine(db_url)
    stored: Dict[str, List[str]] = defaultdict(list)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT sender_id, data FROM events WHERE type_name = 'user' AND data LIKE :p ORDER BY id"),
                {"p": f"%{tag}-%"},
            )
            for sender_id, data in rows:
                test_id = (json.loads(data).get("metadata") or {}).get(TEST_ID_KEY) or ""
                if test_id.startswith(f"{tag}-"):
                    stored[sender_id].append(test_id)
    finally:
        engine.dispose()
    sent_ids = set(sent)
    all_stored = [test_id for ids in stored.values() for test_id in ids]
    unique = set(all_stored)
    reordered = 0
    for ids in stored.values():
        order = [int(test_id.rsplit("-", 1)[1]) for test_id in dict.fromkeys(ids)]
        reordered += sum(1 for i, a in enumerate(order) for b in order[i + 1:] if b < a)
    return {"sent": len(sent_ids), "lost": len(sent_ids - unique), "duplicated": len(all_stored) - len(unique),
            "reordered": reordered}
