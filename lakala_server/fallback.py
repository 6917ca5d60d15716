"""The last line of defence against silence: if handling a message sent nothing
back (the action server is down, a bug), the user still gets a short apology and
the way to a human, taken from domain.yml.

If the conversation could not be saved because another server saved it after it was read
(lakala_server/tracker_store.py ConversationChanged), the answer was worked out on an old
state and is not kept: the user gets the apology instead of it (on a channel that collects
the turn's messages, REST and WeChat; a live channel such as the web chat has already shown
them, and the apology follows) and can send the message again. A turn that was not stored
sets `turn_not_stored`, and REST answers it with 503 so that a client retries.

A turn of a paused conversation (a person has taken it over, lakala_server/handoff.py) is
silent on purpose and gets no apology."""
import contextvars
import copy
import logging
from typing import Any, Awaitable, Callable, Dict, List, Optional

from rasa.core.channels.channel import UserMessage

from lakala_server import handoff, texts
from lakala_server.patches.tracker_failsafe import TrackerStoreUnavailable
from lakala_server.tracker_store import ConversationChanged

logger = logging.getLogger(__name__)

FAILURE_RESPONSE = "utter_backend_failed"

# Set in the handling task when the turn could not be stored (the conversation store failed):
# the message is not part of the conversation, so a client may send it again (REST answers 503).
turn_not_stored: contextvars.ContextVar[bool] = contextvars.ContextVar("turn_not_stored", default=False)


def _caused_by(error: Optional[BaseException], kind: type) -> bool:
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


def failure_message() -> Dict[str, Any]:
    return texts.response(FAILURE_RESPONSE)


def never_silent(
    on_new_message: Callable[[UserMessage], Awaitable[Any]]
) -> Callable[[UserMessage], Awaitable[Any]]:
    """Wraps a channel's message handler so every message gets at least one reply."""

    async def handle(message: UserMessage) -> None:
        channel = message.output_channel
        original = channel.send_response
        sent: List[int] = [0]

        async def counting(recipient_id: str, response: Dict[str, Any]) -> None:
            sent[0] += 1
            await original(recipient_id, response)

        channel.send_response = counting  # type: ignore[method-assign]
        collected = getattr(channel, "messages", None)
        collected_before = len(collected) if isinstance(collected, list) else 0
        try:
            await on_new_message(message)
        except Exception as error:
            if _caused_by(error, ConversationChanged):
                logger.warning("conversation %s was saved elsewhere meanwhile; its answer is dropped",
                               message.sender_id)
                if isinstance(collected, list):
                    del collected[collected_before:]
                sent[0] = 0
            else:
                logger.exception("handling a message failed; answering with the failure response")
            if _caused_by(error, TrackerStoreUnavailable):
                turn_not_stored.set(True)
        finally:
            channel.send_response = original  # type: ignore[method-assign]
        if sent[0] == 0 and handoff.was_paused(channel):
            return  # a person is talking with the merchant: the bot keeps quiet on purpose
        if sent[0] == 0:
            logger.error("no reply for a message from %s; sending %s", message.sender_id, FAILURE_RESPONSE)
            # send_response pops keys from the dict it is given: hand it a copy.
            await original(message.sender_id, copy.deepcopy(failure_message()))

    return handle
