"""`make cluster`: N Rasa replicas, the action servers, the web page and nginx in front, kept
running by supervisord, sharing PostgreSQL (TRACKER_DB_URL, TERMINAL_DB_URL) and Redis (REDIS_URL).
scripts/cluster.sh prepares the services and secrets, then runs this.

Writes supervisord.conf, nginx.conf and endpoints.yml into CLUSTER_DIR (var/cluster), starts
supervisord, waits until every process answers, prints where to chat, and stops everything on
Ctrl-C. `supervisorctl -c var/cluster/supervisord.conf status` shows the processes;
`... restart rasa:rasa-0` restarts one replica.

Settings (environment): RASA_REPLICAS (2), ACTION_SERVERS (2), RASA_PORT (5005, nginx),
ACTION_PORT (5055, nginx to the action servers), WEB_PORT (8080), REPLICA_BASE_PORT (5100),
ACTION_BASE_PORT (5150), LISTEN_HOST (0.0.0.0), CLUSTER_DIR (var/cluster).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actions.config import DEFAULT_MAX_BODY_KB as DEFAULT_ACTION_MAX_BODY_KB  # noqa: E402
from lakala_common.settings import number_from_env  # noqa: E402
from lakala_server import config as server_config  # noqa: E402

NGINX_TEMPLATE = ROOT / "deploy" / "local" / "nginx.conf.in"
START_TIMEOUT_SECONDS = 300.0
# nginx gives up on an action server this much sooner than Rasa does, so the hung server is
# marked failed and the next calls go to another one.
NGINX_ACTION_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class Cluster:
    replicas: int = 2
    action_servers: int = 2
    rasa_port: int = 5005
    action_port: int = 5055
    web_port: int = 8080
    replica_base_port: int = 5100
    action_base_port: int = 5150
    listen_host: str = "0.0.0.0"
    directory: Path = ROOT / "var" / "cluster"
    web: bool = True
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Cluster:
        def number(name: str, default: int) -> int:
            value = int(env.get(name, "").strip() or default)
            if value < 1:
                raise SystemExit(f"{name} must be at least 1")
            return value

        directory = Path(env.get("CLUSTER_DIR", "").strip() or ROOT / "var" / "cluster")
        return cls(
            replicas=number("RASA_REPLICAS", 2), action_servers=number("ACTION_SERVERS", 2),
            rasa_port=number("RASA_PORT", 5005), action_port=number("ACTION_PORT", 5055),
            web_port=number("WEB_PORT", 8080), replica_base_port=number("REPLICA_BASE_PORT", 5100),
            action_base_port=number("ACTION_BASE_PORT", 5150),
            listen_host=env.get("LISTEN_HOST", "").strip() or "0.0.0.0",
            directory=directory if directory.is_absolute() else ROOT / directory,
            web=env.get("CLUSTER_WEB", "1") != "0", env=dict(env),
        )

    @property
    def replica_ports(self) -> List[int]:
        return [self.replica_base_port + n for n in range(self.replicas)]

    @property
    def action_ports(self) -> List[int]:
        return [self.action_base_port + n for n in range(self.action_servers)]

    @property
    def supervisord_conf(self) -> Path:
        return self.directory / "supervisord.conf"

    def credentials(self) -> Path:
        return ROOT / ("credentials.wechat.yml" if self.env.get("WECHAT_TOKEN") else "credentials.yml")


def servers(ports: List[int]) -> str:
    # A server that refuses a connection is skipped for 10 s; its conversations go to the others.
    return "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;" for port in ports)


def nginx_conf(cluster: Cluster) -> str:
    settings = server_config.from_env(cluster.env)
    action_read = max(0.5, settings.action_timeout_seconds - NGINX_ACTION_MARGIN_SECONDS)
    action_max_kb = int(number_from_env("ACTION_SERVER_MAX_BODY_KB", DEFAULT_ACTION_MAX_BODY_KB, environ=cluster.env))
    values = {
        "@RASA_SERVERS@": servers(cluster.replica_ports),
        "@ACTION_SERVERS@": servers(cluster.action_ports),
        "@RASA_PORT@": str(cluster.rasa_port),
        "@ACTION_PORT@": str(cluster.action_port),
        "@LISTEN_HOST@": cluster.listen_host,
        "@MAX_BODY@": f"{settings.max_request_kb}k",
        "@ACTION_MAX_BODY@": f"{action_max_kb}k",
        "@ACTION_READ_TIMEOUT@": f"{int(action_read * 1000)}ms",
    }
    text = NGINX_TEMPLATE.read_text(encoding="utf-8")
    for name, value in values.items():
        text = text.replace(name, value)
    return text


def endpoints_yml(cluster: Cluster) -> str:
    """endpoints.yml with the action server behind nginx; ${VARS} are left for Rasa to expand."""
    endpoints = yaml.safe_load((ROOT / "endpoints.yml").read_text(encoding="utf-8"))
    endpoints["action_endpoint"]["url"] = f"http://127.0.0.1:{cluster.action_port}/webhook"
    return yaml.safe_dump(endpoints, sort_keys=False, allow_unicode=True)


def program(name: str, command: List[str], log: Path, environment: Optional[Dict[str, str]] = None) -> str:
    lines = [
        f"[program:{name}]",
        "command=" + " ".join(command),
        f"directory={ROOT}",
        "autostart=true",
        # Started again whenever it exits, however often: a replica that cannot reach PostgreSQL
        # keeps trying until it can.
        "autorestart=true",
        "startsecs=0",
        "startretries=1000000",
        "stopasgroup=true",
        "killasgroup=true",
        "stopwaitsecs=20",
        "redirect_stderr=true",
        f"stdout_logfile={log}",
        "stdout_logfile_maxbytes=50MB",
        "stdout_logfile_backups=2",
    ]
    if environment:
        lines.append("environment=" + ",".join(f'{k}="{v}"' for k, v in environment.items()))
    return "\n".join(lines) + "\n"


def supervisord_conf(cluster: Cluster) -> str:
    bin_dir = ROOT / ".venv" / "bin"
    here = cluster.directory
    sections = [
        "[supervisord]\n"
        f"logfile={here / 'supervisord.log'}\npidfile={here / 'supervisord.pid'}\n"
        f"childlogdir={here}\nnodaemon=true\nsilent=true\n",
        f"[unix_http_server]\nfile={here / 'supervisor.sock'}\nchmod=0700\n",
        f"[supervisorctl]\nserverurl=unix://{here / 'supervisor.sock'}\n",
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
    ]
    for n, port in enumerate(cluster.action_ports):
        sections.append(program(
            f"actions-{n}", [str(bin_dir / "python"), "-m", "actions.server", "--port", str(port)],
            here / f"actions-{n}.log"))
    for n, port in enumerate(cluster.replica_ports):
        sections.append(program(
            f"rasa-{n}",
            [str(bin_dir / "rasa"), "run", "--model", "models/lakala.tar.gz", "--endpoints",
             str(here / "endpoints.yml"), "--credentials", str(cluster.credentials()), "--port", str(port)],
            here / f"rasa-{n}.log"))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    sections.append(program("nginx", [nginx, "-p", f"{here}/", "-c", "nginx.conf", "-g", "'daemon off;'"],
                            here / "nginx.log"))
    if cluster.web:
        sections.append(program("web", [str(bin_dir / "python"), "scripts/web_server.py"], here / "web.log"))
    sections.append("[group:rasa]\nprograms=" + ",".join(f"rasa-{n}" for n in range(cluster.replicas)) + "\n")
    sections.append("[group:actions]\nprograms="
                    + ",".join(f"actions-{n}" for n in range(cluster.action_servers)) + "\n")
    return "\n".join(sections)


def write_files(cluster: Cluster) -> None:
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (cluster.directory / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(cluster.directory, 0o700)
    (cluster.directory / "nginx.conf").write_text(nginx_conf(cluster), encoding="utf-8")
    (cluster.directory / "endpoints.yml").write_text(endpoints_yml(cluster), encoding="utf-8")
    cluster.supervisord_conf.write_text(supervisord_conf(cluster), encoding="utf-8")


def shown(path: Path) -> str:
    """A path as the operator reads it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).read()
        return True
    except OSError:
        return False


def health_urls(cluster: Cluster) -> Dict[str, str]:
    urls = {f"actions-{n}": f"http://127.0.0.1:{port}/health" for n, port in enumerate(cluster.action_ports)}
    urls.update({f"rasa-{n}": f"http://127.0.0.1:{port}/" for n, port in enumerate(cluster.replica_ports)})
    urls["nginx"] = f"http://127.0.0.1:{cluster.rasa_port}/"
    if cluster.web:
        urls["web"] = f"http://127.0.0.1:{cluster.web_port}/"
    return urls


def wait_until_up(cluster: Cluster, supervisor: subprocess.Popen) -> None:
    pending = health_urls(cluster)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while pending:
        if supervisor.poll() is not None:
            raise SystemExit(f"supervisord exited; see {cluster.directory / 'supervisord.log'}")
        if time.monotonic() > deadline:
            raise SystemExit(f"not answering after {START_TIMEOUT_SECONDS:.0f} s: {', '.join(pending)}; "
                             f"see the logs in {shown(cluster.directory)}")
        pending = {name: url for name, url in pending.items() if not answers(url)}
        time.sleep(0.5)


def main() -> int:
    cluster = Cluster.from_env()
    if not (ROOT / "models" / "lakala.tar.gz").exists():
        raise SystemExit("no trained model: run `make train`")
    write_files(cluster)
    os.environ.setdefault("RASA_SOCKET_URL", f"http://localhost:{cluster.rasa_port}")
    os.environ.setdefault("WEB_PORT", str(cluster.web_port))
    os.environ.setdefault("WEB_ALLOWED_ORIGINS", f"http://localhost:{cluster.web_port},http://127.0.0.1:{cluster.web_port}")
    if cluster.env.get("WECHAT_TOKEN"):
        os.environ.setdefault("WECHAT_APPSECRET", "")  # optional; Rasa refuses an unset ${VAR}
    supervisor = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "supervisord"), "-c", str(cluster.supervisord_conf)],
        cwd=ROOT, start_new_session=True,
    )

    def stop(*_: object) -> None:
        if supervisor.poll() is None:
            supervisor.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        wait_until_up(cluster, supervisor)
        conf = shown(cluster.supervisord_conf)
        print(f"拉卡拉客服助手 cluster is running: {cluster.replicas} Rasa replicas, "
              f"{cluster.action_servers} action servers, nginx.")
        print(f"""  Chat:   http://localhost:{cluster.web_port}/
  REST:   curl -s localhost:{cluster.rasa_port}/webhooks/rest/webhook -d '{{"sender":"me","message":"押金能退吗"}}'
  Status: .venv/bin/supervisorctl -c {conf} status
  Logs:   {shown(cluster.directory)}/
Press Ctrl-C to stop.""", flush=True)
        supervisor.wait()
    finally:
        stop()
        supervisor.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
