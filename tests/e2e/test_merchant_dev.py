"""The merchant dev set (../shared/eval, written without seeing data/) scored on the
real bot by its own checker: at least 92 % of first replies carry the right facts."""
import subprocess
import sys

from tests.support.servers import ROOT

DEV = ROOT.parent / "shared" / "eval"
MIN_ANSWERS = 0.92


def test_merchant_dev_set_answers(bot):
    checker = DEV / "answer_check.py"
    assert checker.exists(), f"{checker} is missing: the dev set is part of the test contract"
    run = subprocess.run(
        [sys.executable, str(checker), "--url", f"http://127.0.0.1:{bot.rasa_port}", "--min", str(MIN_ANSWERS)],
        capture_output=True, text=True, timeout=600,
    )
    print(run.stdout)
    assert run.returncode == 0, f"dev-set answers below {MIN_ANSWERS}:\n{run.stdout[-3000:]}"
