"""`make bench` on a tiny workload, so the harness cannot rot: one config (ours, the trained
model), one server run, 1 and 2 users for a few seconds."""
import json
import re
import subprocess
import sys

import pytest

from tests.support.servers import BIN, MODEL, ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train` (make e2e does)")
    out = tmp_path_factory.mktemp("bench")
    python = BIN / "python" if (BIN / "python").exists() else sys.executable
    done = subprocess.run(
        [str(python), "bench/run.py", "--configs", "ours", "--model", f"ours={MODEL.relative_to(ROOT)}",
         "--runs", "1", "--users", "1,2", "--duration", "3", "--warmup", "1",
         "--out", str(out), "--work", str(out / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def table_value(markdown: str, row: str, column: int = 1) -> str:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == row:
            return cells[column]
    raise AssertionError(f"no row {row!r} in the report")


def test_report_has_positive_throughput_and_no_failures(report):
    markdown = (report / "latest.md").read_text(encoding="utf-8")
    assert re.search(r"^\| metric \| ours \|", markdown, re.M), "no 'ours' column"
    for users in ("1 user", "2 users"):
        assert float(table_value(markdown, f"{users}: msg/s")) > 0
        assert table_value(markdown, f"{users}: errors") == "0"
        assert table_value(markdown, f"{users}: empty replies") == "0"


def test_raw_results_have_every_run(report):
    result = json.loads((report / "latest.json").read_text(encoding="utf-8"))
    ours = result["summary"]["ours"]
    assert ours["status"] == "ok", ours.get("problems")
    assert ours["nlu"]["intent_accuracy"] >= 0.9
    assert ours["first_answer_s"] > 0 and ours["peak_memory_mb"] > 0
    for users in ("1", "2"):
        assert ours["load"][users]["msg_per_s"] > 0
        assert ours["load"][users]["errors_all_runs"] == 0
        assert ours["load"][users]["empty_all_runs"] == 0
    assert len(result["configs"]["ours"]["server_runs"]) == 1


def test_chart_and_headline_are_written(report):
    assert (report / "latest.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "ours" in (report / "headline.md").read_text(encoding="utf-8")
