import pytest

from tests.postgres import (  # noqa: F401 - the hook names what did not run
    pytest_terminal_summary,
    reachable_postgres_url,
)


@pytest.fixture(scope="module")
def postgres_base_url(request) -> str:
    return reachable_postgres_url(request.node.nodeid)
