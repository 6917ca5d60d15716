"""The Rasa patches are installed by the server's start hook only: importing changes nothing,
and a Rasa version they were not written for stops the server with a clear message."""
import subprocess
import sys
import textwrap

import pytest

from lakala_server import patches

IMPORT_EVERYTHING = textwrap.dedent("""
    import importlib, logging, pkgutil
    import lakala_server
    record_factory = logging.getLogRecordFactory()
    for module in pkgutil.walk_packages(lakala_server.__path__, "lakala_server."):
        importlib.import_module(module.name)

    import rasa.core.processor
    from rasa.core.actions.action import RemoteAction
    from rasa.core.processor import MessageProcessor
    from rasa.shared.core.domain import Domain
    from rasa.shared.core.events import Event
    from rasa.utils.endpoints import EndpointConfig
    from lakala_server import patches

    def rasa_internals():
        return [
            RemoteAction._validate_action_result.__module__,
            rasa.core.processor.DaskGraphRunner.__module__,
            EndpointConfig.session.__module__,
            Event.resolve_by_type.__module__,
            Domain.is_empty.__module__,
            MessageProcessor.parse_message.__module__,
            str(hasattr(MessageProcessor.handle_message, "__wrapped__")),  # admitted() wraps Rasa's
        ]

    print("|".join(rasa_internals() + [
        str(logging.getLogRecordFactory() is record_factory), str(patches.installed())]))
    patches.install()
    print("|".join(rasa_internals()))
""")

RASA_MODULES = ["rasa.core.actions.action", "rasa.engine.runner.dask", "rasa.utils.endpoints",
                "rasa.shared.core.events", "rasa.shared.core.domain", "rasa.core.processor", "False"]


def test_importing_every_module_patches_nothing_until_install():
    run = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    before, after = run.stdout.strip().splitlines()[-2:]
    assert before.split("|") == RASA_MODULES + ["True", "[]"]
    assert after.split("|") == [
        "lakala_server.patches.action_result", "lakala_server.patches.graph_runner",
        "lakala_server.patches.action_session", "lakala_server.patches.event_classes",
        "lakala_server.patches.domain_empty", "lakala_server.patches.typed_commands",
        "True",
    ]


def test_another_rasa_version_is_refused_with_a_clear_message():
    patches.check_rasa_version(patches.RASA_VERSION)
    for other in ("3.6.20", "3.7.0", "3.10.0"):
        expected = f"written for Rasa {patches.RASA_VERSION}.*Rasa {other} is installed"
        with pytest.raises(patches.RasaVersionMismatch, match=expected):
            patches.check_rasa_version(other)


def test_the_installed_rasa_is_the_one_the_patches_were_written_for():
    import rasa

    assert rasa.__version__ == patches.RASA_VERSION
