"""Replaces `DaskGraphRunner` where the message processor uses it (rasa/core/processor.py).

Why: every message runs the NLU and the policy graph through dask's scheduler, which rebuilds
the task graph and its dependency bookkeeping on each call, a large share of the graph's time
with light models like ours. The graph is a small DAG run on one thread anyway:
`SequentialGraphRunner` computes the order once per set of targets and calls the same graph
nodes in it.

Proved by: tests/unit/test_patches.py::test_sequential_runner_gives_what_dask_gives and
::test_sequential_runner_reports_a_failing_component_like_dask.
"""
from typing import Any, Dict, List, Optional, Tuple

import rasa.core.processor
from rasa.engine.exceptions import GraphRunError
from rasa.engine.graph import GraphSchema
from rasa.engine.runner.dask import DaskGraphRunner


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


def install() -> None:
    rasa.core.processor.DaskGraphRunner = SequentialGraphRunner  # type: ignore[misc]
