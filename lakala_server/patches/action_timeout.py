"""Replaces the module constant `DEFAULT_REQUEST_TIMEOUT` that `RemoteAction.run`
(rasa/core/actions/action.py) passes as each action-server call's timeout.

Why: Rasa waits 5 minutes for an action server that accepted the call and then hangs (a stopped
or overloaded process). The merchant saw nothing for that long, then no answer at all. The call
now gives up after ACTION_TIMEOUT_SECONDS (4 s by default): Rasa's processor logs the failed
action and goes on, and `fallback.never_silent` answers the turn with the apology and the way to
a human, within WeChat's 5 s. The user's message is kept in the conversation; the next turn
calls the action server again.

Proved by: tests/cluster/test_faults.py::test_a_hung_action_server_costs_an_apology_not_silence
(a SIGSTOPped action server) and tests/unit/test_patches.py::test_action_calls_time_out_as_configured.
"""
from rasa.core.actions import action

from lakala_server import config

RASA_DEFAULT = action.DEFAULT_REQUEST_TIMEOUT


def install() -> None:
    action.DEFAULT_REQUEST_TIMEOUT = config.current().action_timeout_seconds
