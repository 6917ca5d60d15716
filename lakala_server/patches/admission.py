"""Wraps `MessageProcessor.handle_message` (rasa/core/processor.py).

Why: the Rasa server handles every message on one event loop, and each new message starts at
once and takes turns with every message in progress, so under load a message that needs
several steps waits behind every later one, once per step. lakala_server/admission.py lets a
few messages run at a time, in arrival order; Rasa's own method handles each message
unchanged. Rasa's Agent takes the sender's lock before calling it, so a sender's second
message does not hold a slot while it waits.

Proved by: tests/unit/test_admission.py (order, limits, time-outs, failures, cancellation)
and every e2e test, which run through it.
"""
from rasa.core.processor import MessageProcessor

from lakala_server.admission import admitted

RASA_HANDLE_MESSAGE = MessageProcessor.handle_message


def install() -> None:
    MessageProcessor.handle_message = admitted(RASA_HANDLE_MESSAGE)  # type: ignore[method-assign]
