"""What a merchant types to verify a terminal never reaches the servers' logs or the
conversation store in clear, even with both servers logging at debug level."""
import datetime as dt
import re
import uuid

import sqlalchemy as sa

from actions.registry import Registry, hash_phone_tail, terminals

TODAY = dt.date.today()


def test_tails_and_phone_numbers_are_masked_in_logs_and_stored_conversations(bot):
    registry = Registry(f"sqlite:///{bot.terminal_db}", auto_seed=False)
    with registry.engine.begin() as connection:
        connection.execute(terminals.insert().values(
            terminal_id="SEC00004", merchant_name="日志测试店", device_type="电签POS",
            phone_tail_hash=hash_phone_tail("SEC00004", "9753"),
            last_transaction_on=TODAY, contract_ends_on=TODAY + dt.timedelta(days=30),
            deposit_amount=0, deposit_refunded=False, termination_fee=0,
        ))
    registry.close()
    sender = f"logs-{uuid.uuid4().hex[:8]}"
    bot.texts(sender, "帮我查一下终端状态")
    bot.texts(sender, "9 7 5 3")  # the tail, typed where the terminal number was asked
    bot.texts(sender, "SEC00004")
    bot.texts(sender, "９７５３")  # full-width
    bot.texts(sender, "我的手机号是13987659753")
    # As typed, not inside a longer number (a confidence such as 0.000146289097534 is no leak).
    secrets = [re.compile(rf"(?<![0-9０-９]){re.escape(typed)}(?![0-9０-９])")
               for typed in ("9753", "9 7 5 3", "９７５３", "13987659753")]
    rasa_log = (bot.workdir / "rasa.log").read_text(encoding="utf-8", errors="replace")
    actions_log = (bot.workdir / "actions.log").read_text(encoding="utf-8", errors="replace")
    assert "****" in rasa_log  # the debug lines with the merchant's words are there, masked
    for secret in secrets:
        assert not secret.search(rasa_log) and not secret.search(actions_log), secret.pattern
    engine = sa.create_engine(f"sqlite:///{bot.workdir / 'tracker.db'}")
    with engine.connect() as connection:
        stored = " ".join(row[0] for row in connection.execute(
            sa.text("SELECT data FROM events WHERE sender_id = :s"), {"s": f"rest:{sender}"}))
    engine.dispose()
    assert "日志测试店" in stored  # verified: the conversation is all there
    for secret in secrets:
        assert not secret.search(stored), secret.pattern
