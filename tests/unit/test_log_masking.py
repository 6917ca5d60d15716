"""Digit runs in log lines are masked, whoever logs them and however they are formatted."""
import io
import logging

import pytest

from lakala_common import log_masking


@pytest.fixture()
def captured():
    log_masking.install()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("some.library")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.removeHandler(handler)


@pytest.mark.parametrize("typed", ["6721", "67 21", "６７２１", "13800006721", "138 0000 6721"])
def test_a_typed_number_never_reaches_the_log(captured, typed):
    logger, stream = captured
    logger.error("An exception occured while handling user message '%s'.", f"尾号{typed}")
    line = stream.getvalue()
    assert "****" in line
    assert "".join(typed.split()) not in "".join(line.split())
    assert "６７２１" not in line


def test_short_numbers_and_words_stay(captured):
    logger, stream = captured
    logger.info("user %s asked about 押金 for 3 months", "merchant-7")
    assert stream.getvalue().strip() == "some.library INFO user merchant-7 asked about 押金 for 3 months"


def test_exception_text_is_masked(captured):
    logger, stream = captured
    try:
        raise ValueError("bad request body {'text': '手机13800006721'}")
    except ValueError:
        logger.exception("action server error")
    assert "13800006721" not in stream.getvalue() and "ValueError" in stream.getvalue()
