"""Guessing a terminal's phone tail over REST, as an attacker would: a new conversation
for every few guesses, and typed commands that would reset a conversation's count."""
import datetime as dt
import uuid

from actions.config import DEFAULT_LOCK_FAILURES
from actions.registry import Registry, hash_phone_tail, terminals
from tests.support.expect import reply, said, says

TODAY = dt.date.today()
MERCHANT = "猜号测试店"
# Three wrong tails in a conversation: the bot stops checking and offers a person.
LOCKED, OFFER = reply("utter_verification_locked"), reply("utter_handoff_offer")


def add_terminal(bot, terminal_id: str, tail: str) -> None:
    registry = Registry(f"sqlite:///{bot.terminal_db}", auto_seed=False)
    with registry.engine.begin() as connection:
        connection.execute(terminals.insert().values(
            terminal_id=terminal_id, merchant_name=MERCHANT, device_type="电签POS",
            phone_tail_hash=hash_phone_tail(terminal_id, tail),
            last_transaction_on=TODAY - dt.timedelta(days=1),
            contract_ends_on=TODAY + dt.timedelta(days=30),
            deposit_amount=99, deposit_refunded=False, termination_fee=0,
        ))
    registry.close()


def sender() -> str:
    return f"guess-{uuid.uuid4().hex[:10]}"


def test_a_guessing_attack_across_new_conversations_is_stopped_before_50_tries(bot):
    add_terminal(bot, "SEC00002", "8642")
    guesses = [f"{n:04d}" for n in range(1000, 1049)] + ["8642"]  # the right tail comes last
    checked, locked, revealed = 0, 0, 0
    for guess in guesses:
        conversation = sender()
        bot.texts(conversation, "帮我查一下终端状态")
        bot.texts(conversation, "SEC00002")
        texts = bot.texts(conversation, guess)
        if says(texts, reply("utter_phone_tail_wrong", tries_left=2), reply("utter_ask_phone_tail")):
            checked += 1
        elif said(texts, "utter_terminal_locked"):
            locked += 1
        if any(MERCHANT in text for text in texts):
            revealed += 1
    assert revealed == 0, "the right tail must not be accepted while the terminal is locked"
    assert checked == DEFAULT_LOCK_FAILURES - 1  # the last failure before the lock says locked
    assert locked == len(guesses) - checked


def test_typed_commands_do_not_reset_a_conversations_tries(bot):
    add_terminal(bot, "SEC00003", "1357")
    conversation = sender()
    bot.texts(conversation, "帮我查一下终端状态")
    bot.texts(conversation, "SEC00003")
    for guess in ("0001", "0002", "0003"):
        texts = bot.texts(conversation, guess)
    assert says(texts, LOCKED, OFFER)
    for command in ("/restart", "/session_start", "/back"):
        bot.texts(conversation, command)
        texts = bot.texts(conversation, "帮我查一下终端状态")
        assert says(texts, LOCKED, OFFER), (command, texts)
