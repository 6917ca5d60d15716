"""Every change this project makes to Rasa's internals, in one place, installed explicitly.

Each module here replaces or wraps one Rasa internal, says why, and names the test that shows
the result is Rasa's own. Importing them changes nothing: `install()` does, once, from the
start hook every channel of this project registers (lakala_server/channels.py
`guard_server`), before Rasa loads the model. It refuses to start on a Rasa version other
than the one the patches were written for: each of them depends on Rasa's private code.

After the server has started, `freeze_loaded_objects` moves everything loaded so far out of
the garbage collector's sight (`gc.freeze`): the model, spaCy, TensorFlow and Rasa are a great
many objects that live as long as the server, and walking them all now and then stalls every
chat. What the conversations allocate afterwards is collected as before.
"""
import gc
import logging
from typing import Any, List

import rasa

from lakala_server.patches import (
    action_result,
    action_session,
    action_timeout,
    admission,
    domain_empty,
    event_classes,
    graph_runner,
    handoff_pause,
    tracker_failsafe,
    typed_commands,
)

logger = logging.getLogger(__name__)

RASA_VERSION = "3.6.21"  # the version every patch was written and tested against
PATCHES = (
    action_result, graph_runner, action_session, action_timeout, event_classes, domain_empty, typed_commands, admission,
    tracker_failsafe, handoff_pause,
)

_installed: List[str] = []


class RasaVersionMismatch(RuntimeError):
    pass


def check_rasa_version(version: str = rasa.__version__) -> None:
    if version != RASA_VERSION:
        raise RasaVersionMismatch(
            f"lakala_server/patches was written for Rasa {RASA_VERSION}, but Rasa {version} is installed. "
            f"Install rasa=={RASA_VERSION} (requirements.txt), or check each patch in lakala_server/patches "
            "against the new Rasa and update RASA_VERSION."
        )


def install() -> None:
    """Checks the Rasa version and installs every patch; a second call does nothing."""
    if _installed:
        return
    check_rasa_version()
    for patch in PATCHES:
        patch.install()
        _installed.append(patch.__name__.rsplit(".", 1)[-1])
    logger.info("Rasa %s: internals replaced by lakala_server/patches: %s", RASA_VERSION, ", ".join(_installed))


def installed() -> List[str]:
    return list(_installed)


async def freeze_loaded_objects(*_: Any) -> None:
    """A Sanic `after_server_start` listener (see the module's docstring)."""
    gc.collect()  # what start-up left as garbage goes first, so it is not kept forever
    gc.freeze()
    logger.debug("gc: %d objects frozen after start-up", gc.get_freeze_count())
