import pytest

from tests.postgres import pytest_terminal_summary  # noqa: F401 - names the PostgreSQL tests that did not run
from tests.support.servers import MODEL, Bot


@pytest.fixture(scope="session")
def bot(tmp_path_factory):
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train` (make e2e does)")
    running = Bot(tmp_path_factory.mktemp("bot")).start()
    yield running
    running.stop()
