"""The Rasa patches (lakala_server/patches) change how fast things run, never what they do."""
import asyncio
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set

import pytest
import rasa
import rasa.core.processor
from aiohttp import BasicAuth, web
from jsonschema import ValidationError
from rasa.core.actions.action import RemoteAction
from rasa.engine.exceptions import GraphComponentException
from rasa.engine.graph import ExecutionContext, GraphComponent, GraphSchema, SchemaNode
from rasa.engine.runner.dask import DaskGraphRunner
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.shared.core.domain import Domain
from rasa.utils.endpoints import EndpointConfig

from lakala_server import json_codec, patches
from lakala_server.patches import action_session, domain_empty, event_classes, graph_runner
from lakala_server.patches.action_result import action_response_validator, event_validators, is_valid_action_result
from tests.support.servers import DOMAIN, Bot


@pytest.fixture(autouse=True, scope="module")
def installed() -> None:
    patches.install()  # as the server's start hook does

VALID = [
    {"events": [], "responses": []},
    {"events": [{"event": "slot", "name": "terminal_id", "value": "30091254"}],
     "responses": [{"response": "utter_ask_phone_tail"}]},
    {"events": [{"event": "active_loop", "name": None}, {"event": "followup", "name": "action_listen"}]},
]
INVALID = [
    {"events": [{"event": "no_such_event"}]},
    {"events": "not a list"},
    {"responses": [1, 2]},
]


@pytest.mark.parametrize("response", VALID)
def test_valid_action_responses_pass(response: Dict[str, Any]) -> None:
    assert RemoteAction("action_x", None)._validate_action_result(response) is True


@pytest.mark.parametrize("response", INVALID)
def test_invalid_action_responses_fail_with_rasas_message(response: Dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Failed to validate Action server response"):
        RemoteAction("action_x", None)._validate_action_result(response)


SHAPES = VALID + INVALID + [
    {"events": [{"event": "slot", "name": "terminal_id"}]},  # a slot without a value
    {"events": [{"event": "slot", "name": 5, "value": "x"}]},
    {"events": [{"event": "user", "text": "你好", "parse_data": {"intent": {"name": "greet", "confidence": "high"}}}]},
    {"events": [{"event": "user", "text": "你好", "parse_data": {"intent": {"name": "greet", "confidence": 0.9}}}]},
    {"events": [{"event": "bot", "text": "您好", "timestamp": "yesterday"}]},
    {"events": [{"event": "bot", "text": "您好", "timestamp": 1.5, "metadata": None}]},
    {"events": [{"name": "no event name"}]},
    {"events": ["not an object"]},
    {"events": [{"event": "entities", "entities": [{"entity": "terminal_id", "value": "30091254"}]}]},
    {"events": [{"event": "entities"}]},
    {"events": None},
    {"events": [], "responses": [{"text": "好的", "buttons": [{"title": "是", "payload": "/affirm"}]}]},
]


@pytest.mark.parametrize("response", SHAPES)
def test_fast_check_agrees_with_the_full_schema(response: Dict[str, Any]) -> None:
    full = action_response_validator().is_valid(response)
    assert event_validators() is not None  # the fast path is in use
    assert is_valid_action_result(response) is full


def test_the_server_uses_the_sequential_runner() -> None:
    assert rasa.core.processor.DaskGraphRunner is graph_runner.SequentialGraphRunner


class Arithmetic(GraphComponent):
    @classmethod
    def create(cls, config: Dict[str, Any], model_storage: Any, resource: Any, execution_context: Any) -> "Arithmetic":
        return cls()

    def add(self, a: int, b: int) -> int:
        return a + b

    def double(self, a: int) -> int:
        return 2 * a

    def fail(self, a: int) -> int:
        raise RuntimeError("component failed")


def node(fn: str, **needs: str) -> SchemaNode:
    return SchemaNode(needs=needs, uses=Arithmetic, constructor_name="create", fn=fn, config={})


# Declared out of order on purpose: "total" needs nodes defined after it.
SCHEMA = GraphSchema({
    "total": node("add", a="doubled", b="summed"),
    "doubled": node("double", a="summed"),
    "summed": node("add", a="x", b="y"),
    "unused": node("double", a="x"),
    "broken": node("fail", a="x"),
})


def run(runner_class: type, tmp_path: Path, targets: Any = None) -> Dict[str, Any]:
    storage = LocalModelStorage(tmp_path / runner_class.__name__)
    runner = runner_class(SCHEMA, storage, ExecutionContext(SCHEMA, "model"))
    return runner.run(inputs={"x": 2, "y": 3}, targets=targets)


@pytest.mark.parametrize("targets", [["total"], ["summed", "doubled"], ["unused", "total"]])
def test_sequential_runner_gives_what_dask_gives(tmp_path: Path, targets: Any) -> None:
    expected = run(DaskGraphRunner, tmp_path, targets)
    assert run(graph_runner.SequentialGraphRunner, tmp_path, targets) == expected
    if "total" in targets:
        assert expected["total"] == 15


def test_sequential_runner_reports_a_failing_component_like_dask(tmp_path: Path) -> None:
    for runner_class in (DaskGraphRunner, graph_runner.SequentialGraphRunner):
        with pytest.raises(GraphComponentException, match="node broken"):
            run(runner_class, tmp_path, ["broken"])


@pytest.fixture(scope="module")
def action_server(tmp_path_factory) -> Iterator[Bot]:
    """The real action server (`python -m actions.server`), started as `make run` starts it."""
    bot = Bot(tmp_path_factory.mktemp("action_server"))  # only its action server is started
    bot.actions.start()
    yield bot
    bot.actions.stop()


def endpoint_of(action_server: Bot) -> EndpointConfig:
    """A new endpoint, as Rasa makes it from endpoints.yml, with the token."""
    return EndpointConfig(f"http://127.0.0.1:{action_server.action_port}/webhook", token=action_server.action_token)


def connections_to(endpoint: EndpointConfig) -> Dict[int, str]:
    """This machine's TCP connections to the action server: {client port: state}, from the
    client's end, which stays listed (TIME_WAIT) for a minute after the client closes it."""
    port = int(endpoint.url.rsplit(":", 1)[1].split("/")[0])
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if int(remote.split(":")[1], 16) == port:
            found[int(local.split(":")[1], 16)] = state
    return found


ESTABLISHED = "01"


def open_connection(endpoint: EndpointConfig, earlier: Set[int]) -> int:
    """The one connection to the action server (not among `earlier` ones) that is open now."""
    found = connections_to(endpoint)
    ports = [port for port, state in found.items() if state == ESTABLISHED and port not in earlier]
    assert len(ports) == 1, found
    return ports[0]


def terminal_id_check(terminal_id: str) -> Dict[str, Any]:
    """The call Rasa makes when the status form has just read a terminal number."""
    latest = {"text": terminal_id, "intent": {"name": "inform", "confidence": 1.0}, "entities": []}
    tracker = {
        "sender_id": "patches", "slots": {"terminal_id": terminal_id}, "latest_message": latest,
        "events": [{"event": "user", "text": terminal_id, "parse_data": latest},
                   {"event": "slot", "name": "terminal_id", "value": terminal_id}],
        "paused": False, "followup_action": None, "active_loop": {"name": "terminal_status_form"},
        "latest_action_name": "action_listen",
    }
    return {"next_action": "validate_terminal_status_form", "sender_id": "patches", "tracker": tracker,
            "domain": DOMAIN, "version": rasa.__version__}


def not_found(reply: Dict[str, Any]) -> List[str]:
    """The terminal numbers an action server's reply says are unknown."""
    return [response["terminal_id"] for response in reply["responses"]
            if response.get("response") == "utter_terminal_not_found"]


def test_action_server_calls_share_one_connection(action_server: Bot) -> None:
    """The real action server answers five calls, in order, over one TCP connection."""
    endpoint = endpoint_of(action_server)
    before = set(connections_to(endpoint))

    async def five_calls() -> list:
        replies = []
        for n in range(5):
            replies.append(await endpoint.request(json=terminal_id_check(f"ZZ00000{n}"), method="post"))
            open_connection(endpoint, before)
        return replies

    replies = asyncio.run(five_calls())
    assert [not_found(reply) for reply in replies] == [[f"ZZ00000{n}"] for n in range(5)]
    assert len(set(connections_to(endpoint)) - before) == 1


def test_an_idle_connection_is_dropped_before_the_action_server_drops_it(action_server: Bot) -> None:
    """The action server (Sanic) closes idle connections after 5 s. A call after a pause of
    more than KEEPALIVE_S opens a new connection (the real action server still keeps the old
    one then), so the client never writes to one the server may be closing."""
    import time

    from sanic.config import DEFAULT_CONFIG

    assert action_session.KEEPALIVE_S < DEFAULT_CONFIG["KEEP_ALIVE_TIMEOUT"]
    peers: list = []
    endpoint = endpoint_of(action_server)
    before = set(connections_to(endpoint))

    async def calls_with_a_pause() -> None:
        await endpoint.request(json=terminal_id_check("ZZ000001"), method="post")
        peers.append(open_connection(endpoint, before))
        await endpoint.request(json=terminal_id_check("ZZ000002"), method="post")  # at once: the same connection
        peers.append(open_connection(endpoint, before))
        started = time.monotonic()
        while time.monotonic() - started < action_session.KEEPALIVE_S + 1.0:
            await asyncio.sleep(0.1)
        reply = await endpoint.request(json=terminal_id_check("ZZ000003"), method="post")
        assert not_found(reply) == ["ZZ000003"]
        peers.append(open_connection(endpoint, before))

    asyncio.run(calls_with_a_pause())
    assert peers[0] == peers[1]
    assert peers[2] != peers[1]


def with_action_server(webhook: Any, use: Any) -> Any:
    """`await use(url)` while a local HTTP server answers POSTs to `url` with `webhook`."""

    async def scenario() -> Any:
        app = web.Application()
        app.router.add_post("/webhook", webhook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            return await use(f"http://127.0.0.1:{port}/webhook")
        finally:
            await runner.cleanup()

    return asyncio.run(scenario())


def test_action_server_calls_keep_headers_and_basic_auth() -> None:
    """Headers and basic auth that an endpoint is configured with (a proxy in front of the
    action server may ask for them) are sent on the shared session. Our action server reads
    neither, so only a server that records what it receives can show it: a local one."""
    seen: list = []

    async def webhook(request: web.Request) -> web.Response:
        seen.append((request.headers.get("X-Token"), request.headers.get("Authorization"), await request.json()))
        return web.json_response({"events": [], "responses": []})

    async def one_call(url: str) -> None:
        endpoint = EndpointConfig(url, headers={"X-Token": "t1"}, basic_auth={"username": "bot", "password": "pw"})
        await endpoint.request(json={"text": "押金能退吗"})

    with_action_server(webhook, one_call)
    assert seen == [("t1", BasicAuth("bot", "pw").encode(), {"text": "押金能退吗"})]


@pytest.mark.parametrize(
    "value",
    [
        {"text": "押金能退吗", "confidence": 0.9731, "entities": [], "slots": {"phone_tail": None}},
        {"big": 2**70, "nested": [1.5, "终端", {"k": True}]},
        {1: "non-string key"},
    ],
    ids=["tracker-like", "wide-int", "int-key"],
)
def test_request_bodies_encode_the_same_values_as_json(value: Any) -> None:
    assert json.loads(json_codec.dumps(value)) == json.loads(json.dumps(value))


def test_request_bodies_encode_numpy_numbers() -> None:
    import numpy as np

    encoded = json_codec.dumps({"confidence": np.float32(0.5), "n": np.int64(3)})
    assert json.loads(encoded) == {"confidence": 0.5, "n": 3}


def test_event_classes_resolve_as_in_rasa() -> None:
    from rasa.shared.core.events import Event
    from rasa.shared.utils.common import all_subclasses

    for cls in all_subclasses(Event):
        for _ in range(2):  # the second lookup comes from the cache
            assert Event.resolve_by_type(cls.type_name) is event_classes.RASA_RESOLVE_BY_TYPE(cls.type_name)
    assert Event.resolve_by_type("no_such_event", default=Event) is Event
    assert Event.resolve_by_type("topic") is None
    with pytest.raises(ValueError, match="Unknown event name"):
        Event.resolve_by_type("no_such_event")


def test_objects_loaded_before_the_server_starts_are_frozen_and_later_garbage_collected() -> None:
    import gc
    import weakref

    from lakala_server.channels import SafeRestInput

    async def on_message(_: Any) -> None:
        return None

    blueprint = SafeRestInput().blueprint(on_message)
    assert [(future.listener.__name__, future.event) for future in blueprint._future_listeners] == [
        ("before_start", "before_server_start"), ("after_start", "after_server_start")]

    class Cycle:
        pass

    gc.unfreeze()
    try:
        asyncio.run(patches.freeze_loaded_objects(None, None))
        assert gc.get_freeze_count() > 1000  # this test process's modules, at least
        later = Cycle()
        later.self = later  # garbage in a reference cycle, made after the freeze
        alive = weakref.ref(later)
        del later
        gc.collect()
        assert alive() is None
    finally:
        gc.unfreeze()


def test_domain_emptiness_is_rasas_answer() -> None:
    """The shortcut for a domain with responses gives Rasa's own answer on every domain."""
    original = domain_empty.RASA_IS_EMPTY
    domains = [
        Domain.load(str(Path(__file__).resolve().parents[2] / "domain.yml")),
        Domain.empty(),
        Domain.from_dict({}),
        Domain.from_dict({"intents": ["greet"]}),
        Domain.from_dict({"responses": {"utter_greet": [{"text": "您好"}]}}),
    ]
    assert Domain.is_empty is domain_empty._is_empty
    answers = [domain.is_empty() for domain in domains]
    assert answers == [original(domain) for domain in domains]
    assert answers == [False, True, True, False, False]


def test_action_calls_time_out_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """An action server that accepts a call and never answers: with the patch, RemoteAction gives
    up after ACTION_TIMEOUT_SECONDS and raises (the turn is then answered with the apology), where
    Rasa alone waits five minutes. The hung handler is released when the test ends."""
    from rasa.core.actions import action as rasa_action
    from rasa.core.channels.channel import CollectingOutputChannel
    from rasa.core.nlg import TemplatedNaturalLanguageGenerator
    from rasa.shared.core.trackers import DialogueStateTracker

    from lakala_server.patches import action_timeout

    assert action_timeout.RASA_DEFAULT == 300
    monkeypatch.setenv("ACTION_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setattr(rasa_action, "DEFAULT_REQUEST_TIMEOUT", rasa_action.DEFAULT_REQUEST_TIMEOUT)
    action_timeout.install()
    assert rasa_action.DEFAULT_REQUEST_TIMEOUT == 0.5
    release = asyncio.Event()
    calls: list = []

    async def hung(request: web.Request) -> web.Response:
        calls.append(await request.json())
        await release.wait()
        return web.json_response({"events": [], "responses": []})

    async def run_lookup(url: str) -> str:
        domain = Domain.from_dict(DOMAIN)
        tracker = DialogueStateTracker("timeout", domain.slots)
        remote = RemoteAction("action_terminal_status", EndpointConfig(url))
        try:
            await remote.run(CollectingOutputChannel(), TemplatedNaturalLanguageGenerator(domain.responses),
                             tracker, domain)
        except asyncio.TimeoutError:
            return "timed out"
        finally:
            release.set()
        return "answered"

    assert with_action_server(hung, run_lookup) == "timed out"
    assert len(calls) == 1


def test_a_failing_tracker_store_fails_the_turn() -> None:
    """Rasa's agent wraps the store in a FailSafeTrackerStore that answers a failed read with no
    conversation and keeps a failed save in memory. With the patch, both raise (the channel then
    answers with the apology); a working store is used as before."""
    from rasa.core.tracker_store import InMemoryTrackerStore
    from rasa.shared.core.trackers import DialogueStateTracker

    from lakala_server.patches import tracker_failsafe

    domain = Domain.from_dict(DOMAIN)

    class Unreachable(InMemoryTrackerStore):
        async def retrieve(self, sender_id: str) -> None:
            raise ConnectionError("database restarting")

        async def save(self, tracker: DialogueStateTracker) -> None:
            raise ConnectionError("database restarting")

    tracker = DialogueStateTracker("failsafe", domain.slots)
    rasas = tracker_failsafe.RASA_CREATE_TRACKER_STORE(Unreachable(domain), domain)
    assert asyncio.run(rasas.retrieve("failsafe")) is None  # Rasa alone: a stranger
    asyncio.run(rasas.save(tracker))  # Rasa alone: kept in memory, nothing said

    patched = tracker_failsafe._create_tracker_store(Unreachable(domain), domain)
    with pytest.raises(tracker_failsafe.TrackerStoreUnavailable):
        asyncio.run(patched.retrieve("failsafe"))
    with pytest.raises(tracker_failsafe.TrackerStoreUnavailable):
        asyncio.run(patched.save(tracker))

    working = tracker_failsafe._create_tracker_store(InMemoryTrackerStore(domain), domain)
    asyncio.run(working.save(tracker))
    assert asyncio.run(working.retrieve("failsafe")).sender_id == "failsafe"


def test_a_refused_save_is_not_kept_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the wrapper the server puts around the store: a save refused because the
    conversation changed meanwhile raises (the channel answers with the apology), instead of
    being kept in Rasa's in-memory fallback."""
    from rasa.shared.core.events import ActionExecuted, UserUttered

    from lakala_server.patches import tracker_failsafe
    from lakala_server.tracker_store import ConversationChanged, UrlSQLTrackerStore

    monkeypatch.setenv("TRACKER_DB_URL", f"sqlite:///{tmp_path / 'tracker.db'}")
    monkeypatch.setenv("TRACKER_RETENTION_DAYS", "0")
    domain = Domain.load(str(Path(__file__).resolve().parents[2] / "domain.yml"))
    first, second = UrlSQLTrackerStore(domain=domain), UrlSQLTrackerStore(domain=domain)
    served = tracker_failsafe._create_tracker_store(second, domain)

    def said(tracker: Any, text: str) -> None:
        tracker.update(UserUttered(text, intent={"name": "greet", "confidence": 0.9}))
        tracker.update(ActionExecuted("utter_greet"))
        tracker.update(ActionExecuted("action_listen"))

    try:
        created = asyncio.run(first.get_or_create_tracker("both"))
        said(created, "你好")
        asyncio.run(first.save(created))
        mine, theirs = asyncio.run(served.retrieve("both")), asyncio.run(first.retrieve("both"))
        said(theirs, "在吗")
        asyncio.run(first.save(theirs))
        said(mine, "晚了")
        with pytest.raises(tracker_failsafe.TrackerStoreUnavailable) as refused:
            asyncio.run(served.save(mine))
        assert isinstance(refused.value.__cause__, ConversationChanged)
        assert served._fallback_tracker_store is None  # nothing kept in memory
        stored = [event.text for event in asyncio.run(first.retrieve("both")).events if isinstance(event, UserUttered)]
        assert stored == ["你好", "在吗"]
    finally:
        first.engine.dispose()
        second.engine.dispose()
