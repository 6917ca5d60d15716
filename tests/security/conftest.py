import pytest

from tests.support.servers import MODEL, Bot


@pytest.fixture(scope="session")
def bot(tmp_path_factory):
    """The real Rasa server and action server, started as `make run` starts them."""
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train` (make security does)")
    # At debug level both servers log what merchants type: the masking must still hold.
    running = Bot(tmp_path_factory.mktemp("security_bot"), extra_env={"LOG_LEVEL": "DEBUG"}, debug=True).start()
    yield running
    running.stop()
