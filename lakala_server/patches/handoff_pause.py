"""Wraps `MessageProcessor._run_prediction_loop` (rasa/core/processor.py).

Why: Rasa pauses a conversation on `ConversationPaused` and then predicts nothing until
`ConversationResumed`; nothing resumes it if the person who took it over never says they are
done, and the turn that paused it stops right after the pausing action, without the
`action_listen` every other turn ends with (so the first message after a resume would be
predicted from the pausing action, not from a listening bot). Around Rasa's loop:

- before it: a paused conversation idle for HANDOFF_TIMEOUT_MINUTES is resumed
  (`ConversationResumed`, stored with the turn), so this message is answered by the bot;
- after it: a paused conversation's turn ends with `action_listen` (only once: a paused turn's
  latest action already is), and its output channel is marked paused for
  `fallback.never_silent` and the WeChat channel (lakala_server/handoff.py).

Rasa's own rule stays: a paused conversation's messages are stored and get no prediction.

Proved by: tests/unit/test_handoff_pause.py (the wrapper around a recording loop: marked, ended
listening, resumed when idle, kept when recent), tests/e2e/test_handoff.py and
tests/wechat/test_handoff.py (the real servers: no answer in a pause, kept across a restart,
resumed by kf_close_session and by the idle timeout).
"""
import logging
from typing import Any

from rasa.core.processor import MessageProcessor
from rasa.shared.core.constants import ACTION_LISTEN_NAME
from rasa.shared.core.events import ActionExecuted
from rasa.shared.core.trackers import DialogueStateTracker

from lakala_server import config, handoff

logger = logging.getLogger(__name__)

RASA_RUN_PREDICTION_LOOP = MessageProcessor._run_prediction_loop


async def _run_prediction_loop(self: MessageProcessor, output_channel: Any, tracker: DialogueStateTracker) -> None:
    if handoff.idle_expired(tracker, config.current().handoff_timeout_seconds):
        logger.info("conversation %s was paused and idle too long; the bot answers again", tracker.sender_id)
        for event in handoff.resume_events():
            tracker.update(event)
    await RASA_RUN_PREDICTION_LOOP(self, output_channel, tracker)
    if tracker.is_paused():
        if tracker.latest_action_name != ACTION_LISTEN_NAME:
            tracker.update(ActionExecuted(ACTION_LISTEN_NAME))
        handoff.mark_paused(output_channel)


def install() -> None:
    MessageProcessor._run_prediction_loop = _run_prediction_loop  # type: ignore[method-assign]
