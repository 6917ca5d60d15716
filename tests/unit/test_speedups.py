"""The server speed-ups change how fast things run, never what they do."""
from pathlib import Path
from typing import Any, Dict

import pytest
import rasa.core.processor
from jsonschema import ValidationError
from rasa.core.actions.action import RemoteAction
from rasa.engine.exceptions import GraphComponentException
from rasa.engine.graph import ExecutionContext, GraphComponent, GraphSchema, SchemaNode
from rasa.engine.runner.dask import DaskGraphRunner
from rasa.engine.storage.local_model_storage import LocalModelStorage

import lakala_server  # noqa: F401  installs the speed-ups, as in the server
from lakala_server import speedups

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


def test_the_server_uses_the_sequential_runner() -> None:
    assert rasa.core.processor.DaskGraphRunner is speedups.SequentialGraphRunner


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
    assert run(speedups.SequentialGraphRunner, tmp_path, targets) == expected
    if "total" in targets:
        assert expected["total"] == 15


def test_sequential_runner_reports_a_failing_component_like_dask(tmp_path: Path) -> None:
    for runner_class in (DaskGraphRunner, speedups.SequentialGraphRunner):
        with pytest.raises(GraphComponentException, match="node broken"):
            run(runner_class, tmp_path, ["broken"])
