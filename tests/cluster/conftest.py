"""The cluster tests' fixtures: one cluster for the fault tests (starting one takes a minute on
two cores), the table of their counts, and the PostgreSQL server the race tests use."""
import json

import pytest

from tests import postgres
from tests.support.cluster import Cluster
from tests.support.servers import MODEL, ROOT

RESULTS = ROOT / "results" / "cluster"
_rows: dict = {}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train`")
    running = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def fault_table():
    """Each fault case's counts, written to results/cluster/faults.json and printed at the end."""
    yield _rows
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(_rows, ensure_ascii=False, indent=2), encoding="utf-8")


@pytest.fixture(scope="module")
def postgres_base_url(request) -> str:
    return postgres.reachable_postgres_url(request.node.nodeid)


def pytest_terminal_summary(terminalreporter):
    postgres.pytest_terminal_summary(terminalreporter)
    if not _rows:
        return
    terminalreporter.write_line("fault case | sent | lost | duplicated | reordered | retried by the client")
    for case, row in _rows.items():
        terminalreporter.write_line(
            f"{case} | {row['sent']} | {row['lost']} | {row['duplicated']} | {row['reordered']} | {row['retried']}")
