import pytest

from tests.e2e.servers import MODEL, Bot


@pytest.fixture(scope="session")
def bot(tmp_path_factory):
    """The real Rasa server and action server, started as `make run` starts them."""
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train` (make security does)")
    running = Bot(tmp_path_factory.mktemp("security_bot")).start()
    yield running
    running.stop()
