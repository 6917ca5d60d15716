"""Fixes for hot spots found by profiling the Rasa server under load (see bench/).

1. Rasa 3.6 checks every action server response with `jsonschema.validate`, which
first validates the *schema* against the JSON Schema meta-schema, on every call.
Under load that meta-schema check was over half of the server's CPU time
(forms call the action server once or twice per message). Here validators are
built once for the same schema; a valid response passes exactly as before, and
an invalid one is handed to Rasa's own method so the error is the same. The schema
says each event is `oneOf` about twenty shapes, each fixing a different `event`
name, so only the shape an event names can match: each event is checked against
that shape alone instead of against all of them.

2. Every message runs the NLU and the policy graph through dask's scheduler, which
rebuilds the task graph and its dependency bookkeeping on each call (about a fifth
of the graph's time with our light models). The graph is a small DAG run on one
thread anyway: `SequentialGraphRunner` computes the order once per set of targets
and calls the same graph nodes in it.

3. Rasa opens a new HTTP session, and so a new TCP connection, for every call to
the action server (forms call it once or twice per message). Calls now share one
keep-alive session per endpoint and event loop, with the same headers, auth and
timeout; a connection the action server closed is not reused, and one idle for 2 s is
closed by the client first, so it never races the server's own closing.

4. Reading a conversation turns every stored event back into an object; Rasa finds
each event's class by walking all subclasses of Event, every time. The class found
for a type name is remembered.

5. Each call to the action server sends the whole conversation as JSON; encoding it
with the standard library was about 7 % of the server's time. The shared session
encodes with orjson (same JSON values; the standard library for anything orjson
cannot encode).

6. Python's garbage collector now and then walks every object the process holds, to find
reference cycles among them: with the model, spaCy, TensorFlow (which Rasa imports) and
Rasa loaded, well over a million objects, a pause of 0.1-0.25 s in which no chat is
answered. The objects that exist once the model is loaded live as long as the server,
so they are moved out of the collector's sight (`gc.freeze`); what the conversations
allocate afterwards is collected as before.

7. Before each message's NLU result is used, Rasa asks whether the domain is empty by
building an empty domain and comparing both as dicts: 2.5 % of the server's time under
load. A domain with responses is not empty (its dict differs in that key); only a domain
without any is compared Rasa's way.
"""
import asyncio
import copy
import functools
import gc
import json
import logging
import weakref
from typing import Any, Dict, List, Optional, Tuple

import aiohttp
import orjson
import rasa.core.processor
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from rasa.core.actions.action import RemoteAction
from rasa.engine.exceptions import GraphRunError
from rasa.engine.graph import GraphSchema
from rasa.engine.runner.dask import DaskGraphRunner
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import Event
from rasa.utils.endpoints import DEFAULT_REQUEST_TIMEOUT, EndpointConfig

logger = logging.getLogger(__name__)

_original_validate = RemoteAction._validate_action_result


@functools.lru_cache(maxsize=1)
def action_response_validator() -> Validator:
    schema = RemoteAction.action_response_format_spec()
    cls = validator_for(schema)
    cls.check_schema(schema)  # once, instead of once per response
    return cls(schema)


@functools.lru_cache(maxsize=1)
def event_validators() -> Optional[Tuple[Validator, Dict[str, Validator]]]:
    """(validator for the response without the events' oneOf, one validator per event
    name for that name's shape), or None if the schema is not shaped that way."""
    schema = copy.deepcopy(RemoteAction.action_response_format_spec())
    items = schema.get("properties", {}).get("events", {}).get("items", {})
    shapes = items.pop("oneOf", None)
    if not isinstance(shapes, list):
        return None
    names = [shape.get("properties", {}).get("event", {}).get("const") for shape in shapes]
    if any(not isinstance(name, str) for name in names) or len(set(names)) != len(names):
        return None
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema), {name: cls({**items, "allOf": [shape]}) for name, shape in zip(names, shapes, strict=True)}


def is_valid_action_result(result: Any) -> bool:
    validators = event_validators()
    if validators is None:
        return best_match(action_response_validator().iter_errors(result)) is None
    outer, shapes = validators
    if not outer.is_valid(result):
        return False
    for event in result.get("events") or []:
        shape = shapes.get(event.get("event"))
        if shape is None or not shape.is_valid(event):
            return False
    return True


def _validate_action_result(self: RemoteAction, result: Dict[str, Any]) -> bool:
    if is_valid_action_result(result):
        return True
    return _original_validate(self, result)  # raises Rasa's ValidationError


class SequentialGraphRunner(DaskGraphRunner):
    """Runs the same graph nodes as DaskGraphRunner, in a precomputed order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plans: Dict[Tuple[str, ...], List[Tuple[str, List[str]]]] = {}

    def _plan(self, targets: Tuple[str, ...]) -> List[Tuple[str, List[str]]]:
        if targets not in self._plans:
            self._plans[targets] = execution_order(self._graph_schema.minimal_graph_schema(list(targets)))
        return self._plans[targets]

    def run(
        self, inputs: Optional[Dict[str, Any]] = None, targets: Optional[List[str]] = None
    ) -> Dict[str, Any]:
        run_targets = tuple(targets if targets else self._graph_schema.target_names)
        results: Dict[str, Any] = {name: (name, value) for name, value in (inputs or {}).items()}
        try:
            for name, needs in self._plan(run_targets):
                if name in results:
                    raise GraphRunError(f"Input '{name}' clashes with a node name.")
                # Like dask, hand a node its parents' (name, output) pairs, or the bare
                # name of an input that was not given (the node then reports it).
                results[name] = self._instantiated_nodes[name](*[results.get(n, n) for n in needs])
        except RuntimeError as error:
            raise GraphRunError("Error running runner.") from error
        return dict(results[target] for target in run_targets)


def execution_order(schema: GraphSchema) -> List[Tuple[str, List[str]]]:
    """The schema's nodes, each after the nodes it needs, with what it needs."""
    order: List[Tuple[str, List[str]]] = []
    done: set = set()

    def visit(name: str, path: Tuple[str, ...]) -> None:
        if name in done or name not in schema.nodes:
            return
        if name in path:
            raise GraphRunError(f"Cycle in the graph at '{name}'.")
        needs = list(schema.nodes[name].needs.values())
        for parent in needs:
            visit(parent, path + (name,))
        done.add(name)
        order.append((name, needs))

    for node_name in schema.nodes:
        visit(node_name, ())
    return order


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> str:
    """json.dumps's JSON for a request body, faster."""
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS).decode()
    except TypeError:  # e.g. an integer wider than 64 bits
        return json.dumps(value)


# An idle kept connection is closed by the client after this many seconds, before the action
# server closes it (Sanic, which the action server runs on, closes them after 5 s). Otherwise
# the client could send a request on a connection just as the server closes it: seen once in
# ~35,000 calls at 50 users ("Cannot write to closing transport"), a lost answer.
KEEPALIVE_S = 2.0


def _session_for(endpoint: EndpointConfig, keep_alive: bool = False) -> aiohttp.ClientSession:
    """Rasa's EndpointConfig.session (same headers, auth and timeout), encoding with `dumps`;
    with `keep_alive` (inside the server's event loop), idle connections live KEEPALIVE_S."""
    auth = None
    if endpoint.basic_auth:
        auth = aiohttp.BasicAuth(endpoint.basic_auth["username"], endpoint.basic_auth["password"])
    return aiohttp.ClientSession(
        headers=endpoint.headers,
        auth=auth,
        timeout=aiohttp.ClientTimeout(total=DEFAULT_REQUEST_TIMEOUT),
        json_serialize=dumps,
        connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S) if keep_alive else None,
    )


class _KeptSession:
    """`async with` yields the shared session and leaves it open."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def __aenter__(self) -> aiohttp.ClientSession:
        return self._session

    async def __aexit__(self, *exc_info: Any) -> None:
        return None


def _shared_session(self: EndpointConfig) -> _KeptSession:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop: a caller outside the server gets a session of its own, like Rasa's
        return _session_for(self)
    sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
        self.__dict__.setdefault("_lakala_sessions", weakref.WeakKeyDictionary())
    )
    session = sessions.get(loop)
    if session is None or session.closed:
        session = sessions[loop] = _session_for(self, keep_alive=True)
    return _KeptSession(session)


_resolve_by_type = Event.resolve_by_type
_event_classes: Dict[str, type] = {}


def _cached_resolve_by_type(type_name: str, default: Optional[type] = None) -> Optional[type]:
    cls = _event_classes.get(type_name)
    if cls is None:
        cls = _resolve_by_type(type_name, default)
        if cls is not None and cls is not default:
            _event_classes[type_name] = cls
    return cls


_domain_is_empty = Domain.is_empty


def _is_empty(self: Domain) -> bool:
    if self.responses:
        return False  # Domain.empty() has none, so the dicts Rasa compares differ
    return _domain_is_empty(self)


async def freeze_loaded_objects(*_: Any) -> None:
    """A Sanic `after_server_start` listener (point 6 above)."""
    gc.collect()  # what start-up left as garbage goes first, so it is not kept forever
    gc.freeze()
    logger.debug("gc: %d objects frozen after start-up", gc.get_freeze_count())


def install() -> None:
    """Idempotent; called when the server imports lakala_server (before the model loads)."""
    RemoteAction._validate_action_result = _validate_action_result  # type: ignore[method-assign]
    rasa.core.processor.DaskGraphRunner = SequentialGraphRunner  # type: ignore[misc]
    EndpointConfig.session = _shared_session  # type: ignore[method-assign]
    Event.resolve_by_type = staticmethod(_cached_resolve_by_type)  # type: ignore[method-assign]
    Domain.is_empty = _is_empty  # type: ignore[method-assign]
