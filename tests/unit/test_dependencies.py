"""The arrows between the packages point one way: the action server needs neither the NLU
nor the Rasa-server side, and nothing in the product imports test or script code."""
import subprocess
import sys
import textwrap

import pytest

IMPORTED_TOP_LEVEL = textwrap.dedent("""
    import importlib, pkgutil, sys
    package = importlib.import_module(sys.argv[1])
    for module in pkgutil.walk_packages(package.__path__, sys.argv[1] + "."):
        importlib.import_module(module.name)
    ours = ("actions", "lakala_common", "lakala_nlu", "lakala_server", "scripts", "tests", "bench")
    print(" ".join(sorted({name.split(".")[0] for name in sys.modules if name.split(".")[0] in ours})))
""")


def imported_by(package: str) -> set:
    run = subprocess.run([sys.executable, "-c", IMPORTED_TOP_LEVEL, package], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return set(run.stdout.split())


@pytest.mark.parametrize("package, may_use", [
    ("lakala_common", {"lakala_common"}),
    ("actions", {"actions", "lakala_common"}),
    ("lakala_nlu", {"lakala_nlu", "lakala_common"}),
    ("lakala_server", {"lakala_server", "lakala_common", "lakala_nlu"}),
])
def test_each_package_imports_only_what_it_builds_on(package, may_use):
    assert imported_by(package) <= may_use
