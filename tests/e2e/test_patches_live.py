"""The real server installs the Rasa patches when it starts, all of them, once."""
from lakala_server import patches


def test_the_server_installed_every_patch_at_start(bot):
    assert bot.texts("patches-live", "你好")  # the server has started and answers
    log = bot.rasa.log_path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in log.splitlines() if "internals replaced by lakala_server/patches" in line]
    assert len(lines) == 1, lines
    names = [patch.__name__.rsplit(".", 1)[-1] for patch in patches.PATCHES]
    assert lines[0].endswith(", ".join(names)), lines[0]
    assert f"Rasa {patches.RASA_VERSION}" in lines[0]
