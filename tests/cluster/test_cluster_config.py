"""The files scripts/cluster.py writes: nginx accepts its configuration, every placeholder is
filled, and the routing the issue asks for is there."""
import importlib.util
import re
import subprocess
import sys

from tests.support.servers import ROOT

_spec = importlib.util.spec_from_file_location("cluster_script", ROOT / "scripts" / "cluster.py")
cluster_script = sys.modules["cluster_script"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster_script)


def rendered(tmp_path, **env):
    settings = cluster_script.Cluster.from_env({"CLUSTER_DIR": str(tmp_path), **env})
    cluster_script.write_files(settings)
    return settings, (tmp_path / "nginx.conf").read_text(encoding="utf-8")


def test_nginx_accepts_the_configuration(tmp_path):
    _, conf = rendered(tmp_path, RASA_REPLICAS="3", ACTION_SERVERS="2")
    assert not re.search(r"@[A-Z_]+@", conf.split("\n", 1)[1])
    checked = subprocess.run(["nginx", "-t", "-p", f"{tmp_path}/", "-c", "nginx.conf"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_each_conversation_is_hashed_to_one_replica(tmp_path):
    settings, conf = rendered(tmp_path, RASA_REPLICAS="3", REPLICA_BASE_PORT="6100")
    assert "hash $arg_openid consistent;" in conf  # WeChat: the openid WeChat adds to the push URL
    assert "hash $rest_sender consistent;" in conf  # REST: the sender in the body
    for port in (6100, 6101, 6102):
        assert conf.count(f"server 127.0.0.1:{port} ") == 3  # in each of the three Rasa upstreams
    supervisord = (tmp_path / "supervisord.conf").read_text(encoding="utf-8")
    assert [f"[program:rasa-{n}]" in supervisord for n in range(3)] == [True] * 3
    assert supervisord.count("autorestart=true") == 3 + 2 + 2  # replicas, action servers, nginx and web


def test_the_action_timeout_reaches_nginx_before_rasa(tmp_path):
    _, conf = rendered(tmp_path, ACTION_TIMEOUT_SECONDS="3")
    assert "proxy_read_timeout 2000ms;" in conf
