"""The Kubernetes manifests (deploy/k8s) give the servers the settings, commands, ports and
endpoints that `make cluster` gives them. Every expectation is read from the files that define
it (scripts/cluster.sh, scripts/cluster.py, the servers' config modules, endpoints.yml,
credentials, the nginx template), so a setting added there and forgotten here fails."""
import ast
import re
import shlex
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set

import pytest
import yaml
from rasa.shared.constants import ENV_LOG_LEVEL
from sanic.config import DEFAULT_CONFIG as SANIC_DEFAULTS

from actions import config as action_config
from scripts import cluster

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SECRET_SUFFIX = re.compile(r"(SECRET|TOKEN|KEY|PASSWORD)$")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
READS_ENV = {"get", "getenv", "setdefault", "number_from_env"}


def documents() -> List[Dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return docs


DOCS = documents()


def of_kind(kind: str) -> List[Dict[str, Any]]:
    return [doc for doc in DOCS if doc.get("kind") == kind]


def named(kind: str, name: str) -> Dict[str, Any]:
    found = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"one {kind} {name} in deploy/k8s, found {len(found)}"
    return found[0]


def deployment(component: str) -> Dict[str, Any]:
    found = [d for d in of_kind("Deployment")
             if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"one Deployment of {component}"
    return found[0]


def container(component: str) -> Dict[str, Any]:
    containers = deployment(component)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(component: str) -> Dict[str, Dict[str, Any]]:
    return {entry["name"]: entry for entry in container(component).get("env", [])}


# What the code reads --------------------------------------------------------------------------

def names_read_by(path: Path, calls: Set[str] = READS_ENV) -> Set[str]:
    """Environment variables a Python file reads: os.environ.get("X"), env.get("X"),
    number_from_env("X"), os.environ["X"], os.environ.setdefault("X", ...)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in calls and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
        elif calls == READS_ENV and isinstance(node, ast.Subscript) and "environ" in ast.unparse(node.value):
            if isinstance(node.slice, ast.Constant):
                names.add(node.slice.value)
    return {name for name in names if ENV_NAME.match(name)}


def yaml_variables(*paths: Path) -> Set[str]:
    """The ${VAR}s Rasa expands in endpoints.yml and credentials files."""
    return {name for path in paths for name in re.findall(r"\$\{(\w+)\}", path.read_text(encoding="utf-8"))}


def makefile_exports() -> Set[str]:
    return set(re.findall(r"^export (\w+) \?=", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))


CREDENTIALS = [ROOT / "credentials.yml", ROOT / "credentials.wechat.yml"]
RASA_READS = (names_read_by(ROOT / "lakala_server" / "config.py")
              | yaml_variables(ROOT / "endpoints.yml", *CREDENTIALS) | makefile_exports() | {ENV_LOG_LEVEL})
READS = {
    "rasa": RASA_READS,
    "actions": names_read_by(ROOT / "actions" / "config.py") | makefile_exports(),
    "web": names_read_by(ROOT / "scripts" / "web_server.py") | makefile_exports(),
}

CLUSTER_SH = (ROOT / "scripts" / "cluster.sh").read_text(encoding="utf-8")
CLUSTER_SECRETS = set(re.search(r"^load_secrets (.+)$", CLUSTER_SH, re.M).group(1).split())
CLUSTER_GIVES = (set(re.findall(r"^export (\w+)=", CLUSTER_SH, re.M)) | CLUSTER_SECRETS
                 | names_read_by(ROOT / "scripts" / "cluster.py", calls={"setdefault"}))
# Settings whose value holds a secret without saying so in their name.
SECRET_URLS = {"WECOM_WEBHOOK_URL"}  # the group robot's key is the URL's query
SECRETS = (CLUSTER_SECRETS | yaml_variables(ROOT / "endpoints.yml", *CREDENTIALS) | SECRET_URLS
           | {name for name in READS["rasa"] | READS["actions"] if SECRET_SUFFIX.search(name)})


def referenced(value: str) -> Set[str]:
    """Variables a Kubernetes env value uses: $(NAME)."""
    return set(re.findall(r"\$\((\w+)\)", value))


def test_what_the_code_reads_is_found() -> None:
    # The parsing above is what every other test stands on.
    assert {"TRACKER_DB_URL", "REDIS_URL", "WEB_SESSION_SECRET", "ACTION_TIMEOUT_SECONDS"} <= READS["rasa"]
    assert {"TERMINAL_DB_URL", "VERIFICATION_SECRET", "ACTION_SERVER_HOST", "DB_TIMEOUT_SECONDS"} <= READS["actions"]
    assert {"WEB_HOST", "WEB_PORT", "RASA_SOCKET_URL"} <= READS["web"]
    assert {"ACTION_SERVER_TOKEN", "LAKALA_DB_PASSWORD", "TRACKER_DB_URL", "REDIS_URL"} <= CLUSTER_GIVES


# Settings -------------------------------------------------------------------------------------

@pytest.mark.parametrize("component", ["rasa", "actions", "web"])
def test_each_container_gets_only_settings_its_server_reads(component: str) -> None:
    env = env_of(component)
    used_in_values = set().union(*(referenced(entry.get("value", "")) for entry in env.values()))
    # A variable that only builds another (the DB password in the URL) must be one of the
    # cluster's secrets, as in scripts/cluster.sh.
    assert used_in_values <= CLUSTER_SECRETS
    unknown = set(env) - READS[component] - used_in_values
    assert not unknown, f"{component} is given settings nothing reads: {sorted(unknown)}"


@pytest.mark.parametrize("component", ["rasa", "actions", "web"])
def test_each_container_gets_what_make_cluster_gives_its_server(component: str) -> None:
    missing = (CLUSTER_GIVES & READS[component]) - set(env_of(component))
    assert not missing, f"make cluster gives {component} {sorted(missing)}; deploy/k8s does not"


# Settings the manifests leave at the servers' defaults on purpose. A setting added to a
# config module fails the next test until it is given to the pods or named here.
LEFT_AT_DEFAULT = {
    "rasa": {"REST_OPEN": "development only: REST goes through the ingress with JWTs",
             "WECHAT_API_BASE": "WeChat's own API; only tests point it elsewhere",
             "WECHAT_OUTBOX_RECLAIM_SECONDS": "60 s: a dead replica's WeChat answers are resent after a minute"},
    "actions": {"ACTION_SERVER_PORT": "the --port argument sets it",
                "WECOM_POLL_SECONDS": "5 s: a new ticket is posted at once anyway (kicked), this paces retries",
                "TICKET_PHONE_RETENTION_DAYS": "30 days after a ticket is closed, its phone number is deleted"},
    "web": {},
}


@pytest.mark.parametrize("component", ["rasa", "actions", "web"])
def test_every_setting_its_server_reads_is_given_or_left_at_its_default_on_purpose(component: str) -> None:
    own = {"rasa": RASA_READS, "actions": names_read_by(ROOT / "actions" / "config.py"),
           "web": names_read_by(ROOT / "scripts" / "web_server.py")}[component]
    missing = own - set(env_of(component)) - set(LEFT_AT_DEFAULT[component])
    assert not missing, f"{component} reads {sorted(missing)}: give it in deploy/k8s or name it in LEFT_AT_DEFAULT"
    assert set(LEFT_AT_DEFAULT[component]) <= own - set(env_of(component))


def test_every_reference_names_an_existing_key() -> None:
    secret = named("Secret", "lakala-secrets")
    config_maps = {doc["metadata"]["name"]: doc["data"] for doc in of_kind("ConfigMap")}
    for component in ("rasa", "actions", "web"):
        for name, entry in env_of(component).items():
            source = entry.get("valueFrom", {})
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                assert ref["name"] == "lakala-secrets" and ref["key"] in secret["stringData"], name
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                assert ref["key"] in config_maps[ref["name"]], name
            else:
                assert "value" in entry, name
                continue
            assert ref["key"] == name, "a setting is read from the key of its own name"


def test_the_secret_lists_exactly_the_secret_names_with_no_values() -> None:
    secret = named("Secret", "lakala-secrets")
    assert "data" not in secret
    assert set(secret["stringData"]) == SECRETS
    assert all(value == "" for value in secret["stringData"].values())
    for config_map in of_kind("ConfigMap"):
        assert not SECRETS & set(config_map["data"]), "a secret in a ConfigMap"
    for component in ("rasa", "actions", "web"):
        for name, entry in env_of(component).items():
            assert name not in SECRETS or "secretKeyRef" in entry.get("valueFrom", {}), name


def test_the_secret_template_is_not_applied_over_the_real_one() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {"secret.yaml"}


@pytest.mark.parametrize("component", ["rasa", "actions"])
def test_pods_refuse_to_start_with_an_empty_required_secret(component: str) -> None:
    pod = deployment(component)["spec"]["template"]["spec"]
    (check,) = pod["initContainers"]
    refs = {name: entry.get("valueFrom", {}).get("secretKeyRef") for name, entry in env_of(component).items()}
    required = {name for name, ref in refs.items() if ref and not ref.get("optional")}
    assert set(check["args"]) == required
    assert CLUSTER_SECRETS & set(env_of(component)) <= required


def test_database_and_redis_urls_are_make_clusters_with_the_services_hosts() -> None:
    tracker_default = re.search(r"^export TRACKER_DB_URL=\$\{TRACKER_DB_URL:-(.+)\}$", CLUSTER_SH, re.M).group(1)
    terminal_default = re.search(r"^export TERMINAL_DB_URL=\$\{TERMINAL_DB_URL:-(.+)\}$", CLUSTER_SH, re.M).group(1)
    redis_default = re.search(r"^export REDIS_URL=\$\{REDIS_URL:-(.+)\}$", CLUSTER_SH, re.M).group(1)
    postgres, redis = named("Service", "lakala-postgres"), named("Service", "lakala-redis")
    k8s_tracker = env_of("rasa")["TRACKER_DB_URL"]["value"]
    local_form = re.sub(r"\$\((\w+)\)", r"${\1}", k8s_tracker).replace("@lakala-postgres:", "@127.0.0.1:")
    assert local_form == tracker_default
    assert f"lakala-postgres:{postgres['spec']['ports'][0]['port']}/" in k8s_tracker
    assert terminal_default == "$TRACKER_DB_URL"
    assert env_of("actions")["TERMINAL_DB_URL"]["value"] == k8s_tracker
    k8s_redis = named("ConfigMap", "lakala-config")["data"]["REDIS_URL"]
    assert k8s_redis == redis_default.replace("127.0.0.1:", "lakala-redis:")
    assert f"lakala-redis:{redis['spec']['ports'][0]['port']}/" in k8s_redis


# Commands, ports, endpoints ------------------------------------------------------------------

def cluster_commands() -> Dict[str, List[str]]:
    """The commands make cluster's supervisord runs, paths relative to the repository."""
    commands = {}
    program = None
    for line in cluster.supervisord_conf(cluster.Cluster(env={})).splitlines():
        if line.startswith("[program:"):
            program = line[len("[program:"):-1].split("-")[0]
        elif line.startswith("command=") and program in ("rasa", "actions", "web"):
            commands[program] = [arg.replace(f"{ROOT}/", "") for arg in shlex.split(line[len("command="):])]
    return commands


def k8s_command(component: str) -> List[str]:
    spec = container(component)
    workdir = spec["workingDir"].rstrip("/") + "/"
    return [arg.replace(workdir, "") for arg in spec["command"] + spec.get("args", [])]


def option(command: List[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.parametrize("component", ["rasa", "actions", "web"])
def test_commands_are_make_clusters(component: str) -> None:
    local, k8s = cluster_commands()[component], k8s_command(component)
    for command in (local, k8s):
        for flag in ("--port", "--endpoints", "--credentials"):
            if flag in command:
                command[command.index(flag) + 1] = "*"
    assert k8s == local


def test_rasa_serves_the_model_on_port_5005_with_the_mounted_endpoints() -> None:
    local, k8s = cluster_commands()["rasa"], k8s_command("rasa")
    assert option(k8s, "--model") == option(local, "--model") == "models/lakala.tar.gz"
    assert Path(option(k8s, "--credentials")).name == cluster.Cluster(env={}).credentials().name
    settings = cluster.Cluster(env={})
    port = container("rasa")["ports"][0]
    assert int(option(k8s, "--port")) == port["containerPort"] == settings.rasa_port == 5005
    assert "--interface" not in k8s  # rasa run listens on every interface by default
    endpoints_arg = Path(option(k8s, "--endpoints"))
    (mount,) = (m for m in container("rasa")["volumeMounts"] if m["mountPath"] == str(endpoints_arg.parent))
    (volume,) = (v for v in deployment("rasa")["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert endpoints_arg.name in named("ConfigMap", volume["configMap"]["name"])["data"]


def test_endpoints_are_the_repositorys_with_the_action_service() -> None:
    data = named("ConfigMap", "lakala-endpoints")["data"]["endpoints.yml"]
    k8s = yaml.safe_load(data)
    service = named("Service", "lakala-actions")
    expected = yaml.safe_load(cluster.endpoints_yml(cluster.Cluster(env={})))
    expected["action_endpoint"]["url"] = f"http://lakala-actions:{service['spec']['ports'][0]['port']}/webhook"
    assert k8s == expected
    assert "token: ${ACTION_SERVER_TOKEN}" in data  # unquoted, or Rasa does not expand it


def test_ports_are_the_servers_and_the_services() -> None:
    settings = cluster.Cluster(env={})
    expected = {"rasa": settings.rasa_port, "actions": settings.action_port, "web": settings.web_port}
    assert expected == {"rasa": 5005, "actions": action_config.DEFAULT_PORT, "web": 8080}
    assert int(option(k8s_command("actions"), "--port")) == expected["actions"]
    assert int(env_of("web")["WEB_PORT"]["value"]) == expected["web"]
    for component, port in expected.items():
        (container_port,) = container(component)["ports"]
        assert container_port["containerPort"] == port
        (service,) = (s for s in of_kind("Service") if s["spec"].get("selector") == selector(component))
        (service_port,) = service["spec"]["ports"]
        assert service_port["port"] == port and service_port["targetPort"] == container_port["name"]


def test_servers_listen_on_the_pods_address_not_their_loopback_default() -> None:
    assert action_config.DEFAULT_HOST == "127.0.0.1"  # why the manifest must set it
    assert env_of("actions")["ACTION_SERVER_HOST"]["value"] == "0.0.0.0"
    assert env_of("web")["WEB_HOST"]["value"] == "0.0.0.0"


# Probes, disruption, updates ------------------------------------------------------------------

def selector(component: str) -> Dict[str, str]:
    return deployment(component)["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("component", ["rasa", "actions", "web"])
def test_probes_ask_what_make_cluster_waits_for(component: str) -> None:
    urls = cluster.health_urls(cluster.Cluster(env={}))
    expected_path = "/" + urls[f"{component}-0" if component != "web" else "web"].split("/", 3)[3]
    spec = container(component)
    probes = {kind: spec[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in spec}
    assert {"readinessProbe", "livenessProbe"} <= set(probes)
    for probe in probes.values():
        assert probe["httpGet"]["path"] == expected_path
        assert probe["httpGet"]["port"] in (spec["ports"][0]["name"], spec["ports"][0]["containerPort"])


def test_action_server_answers_health_without_the_token() -> None:
    from actions.server import OPEN_PATHS

    assert container("actions")["readinessProbe"]["httpGet"]["path"] in OPEN_PATHS


def test_disruption_budgets_and_policies_select_existing_pods() -> None:
    budgets = {doc["metadata"]["name"]: doc for doc in of_kind("PodDisruptionBudget")}
    for component in ("rasa", "actions"):
        matching = [b for b in budgets.values() if b["spec"]["selector"]["matchLabels"] == selector(component)]
        assert len(matching) == 1, component
        assert matching[0]["spec"]["maxUnavailable"] < deployment(component)["spec"]["replicas"]
    for policy in of_kind("NetworkPolicy"):
        assert policy["spec"]["podSelector"]["matchLabels"] in [selector(c) for c in ("rasa", "actions", "web")]
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                assert peer["podSelector"]["matchLabels"] in [selector(c) for c in ("rasa", "actions", "web")]
    for doc in of_kind("Deployment"):
        template_labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


def test_replicas_updates_and_grace_periods() -> None:
    assert deployment("rasa")["spec"]["replicas"] >= 2
    assert deployment("actions")["spec"]["replicas"] == cluster.Cluster(env={}).action_servers
    for component in ("rasa", "actions", "web"):
        spec = deployment(component)["spec"]
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        pod = spec["template"]["spec"]
        assert pod["enableServiceLinks"] is False  # a Service `rasa` would set RASA_PORT=tcp://...
        resources = container(component)["resources"]
        for kind in ("cpu", "memory"):
            assert kind in resources["requests"] and kind in resources["limits"]
    for component in ("rasa", "actions"):
        pod = deployment(component)["spec"]["template"]["spec"]
        pre_stop = int(container(component)["lifecycle"]["preStop"]["exec"]["command"][-1])
        # Time for the ingress to stop sending, then for Sanic to finish the turns in flight.
        assert pod["terminationGracePeriodSeconds"] > pre_stop + SANIC_DEFAULTS["GRACEFUL_SHUTDOWN_TIMEOUT"]


# The ingress ----------------------------------------------------------------------------------

def nginx_locations() -> Dict[str, str]:
    """make cluster's nginx in front of Rasa: location path -> upstream."""
    template = cluster.NGINX_TEMPLATE.read_text(encoding="utf-8")
    found = re.findall(r"location (?:= )?(\S+) \{\s*proxy_pass http://(\w+);", template)
    return {path: upstream for path, upstream in found if upstream.startswith("rasa_")}


def nginx_hash(upstream: str) -> str:
    template = cluster.NGINX_TEMPLATE.read_text(encoding="utf-8")
    return re.search(rf"upstream {upstream} \{{\s*hash (\S+) consistent;", template).group(1)


def ingress_paths() -> Iterator[Any]:
    for ingress in of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                yield ingress, path


def test_ingress_routes_make_clusters_paths_with_their_hashing() -> None:
    annotation = "nginx.ingress.kubernetes.io/upstream-hash-by"
    routes = {path["path"]: ingress for ingress, path in ingress_paths()}
    for location, upstream in nginx_locations().items():
        if location == "/":
            continue  # Rasa's other routes stay inside the cluster
        assert location in routes, f"no Ingress for {location}"
        annotations = routes[location]["metadata"].get("annotations", {})
        if upstream == "rasa_by_openid":
            assert annotations[annotation] == nginx_hash(upstream) == "$arg_openid"
        elif upstream == "rasa_by_sender":
            # The body is out of the ingress's reach: the bearer token names the sender, and
            # REST through the ingress needs one.
            assert annotations[annotation] == "$http_authorization"
            assert "REST_JWT_SECRET" in env_of("rasa")
        else:
            assert annotation not in annotations
        body = annotations.get("nginx.ingress.kubernetes.io/proxy-body-size")
        assert body == named("ConfigMap", "lakala-config")["data"]["MAX_REQUEST_KB"] + "k"
    socket = routes["/socket.io/"]["metadata"]["annotations"]
    assert int(socket["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600


def test_ingress_backends_exist() -> None:
    services = {doc["metadata"]["name"]: doc for doc in of_kind("Service")}
    for _, path in ingress_paths():
        backend = path["backend"]["service"]
        assert backend["port"]["name"] in [p["name"] for p in services[backend["name"]]["spec"]["ports"]]


def test_the_web_page_and_its_origin_agree() -> None:
    data = named("ConfigMap", "lakala-config")["data"]
    hosts = {path["backend"]["service"]["name"]: rule["host"]
             for ingress in of_kind("Ingress") for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]}
    assert data["WEB_ALLOWED_ORIGINS"] == f"https://{hosts['lakala-web']}"
    assert data["RASA_SOCKET_URL"] == f"https://{hosts['lakala-rasa']}"
