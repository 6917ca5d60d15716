"""The web chat's socket.io sessions, attacked the way a stranger would: another visitor's
session id, guessed or copied without its signature, and a flood over one WebSocket."""
import asyncio
import sqlite3
import threading
from typing import Any, Dict, List, Optional

import socketio

from tests.security.test_guessing import add_terminal
from tests.support.expect import said
from tests.support.servers import render


class Visitor:
    """One browser tab: a socket.io client over WebSocket, as the widget connects."""

    def __init__(self, bot, headers: Optional[Dict[str, str]] = None) -> None:
        self.bot, self.headers = bot, headers or {}
        self.client = socketio.AsyncClient(reconnection=False)
        self.session_id: Optional[str] = None
        self.answers: List[Dict[str, Any]] = []
        self.confirmed = asyncio.Event()
        self.client.on("session_confirm", self._confirm)
        self.client.on("bot_uttered", self._answer)

    async def _confirm(self, session_id: str) -> None:
        self.session_id = session_id
        self.confirmed.set()

    async def _answer(self, message: Dict[str, Any]) -> None:
        self.answers.append(message)

    async def join(self, session_id: Any = None) -> str:
        if not self.client.connected:
            await self.client.connect(f"http://127.0.0.1:{self.bot.rasa_port}", headers=self.headers,
                                      transports=["websocket"], socketio_path="/socket.io")
        self.confirmed.clear()
        await self.client.emit("session_request", {"session_id": session_id})
        await asyncio.wait_for(self.confirmed.wait(), 10)
        return self.session_id

    async def say(self, text: str, session_id: Optional[str] = None, wait: float = 15) -> List[str]:
        before = len(self.answers)
        await self.client.emit("user_uttered", {"message": text, "session_id": session_id or self.session_id})
        deadline = asyncio.get_running_loop().time() + wait
        while len(self.answers) == before and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the rest of this turn's messages
        return [answer.get("text", "") for answer in self.answers[before:]]

    async def close(self) -> None:
        await self.client.disconnect()


def run(coroutine: Any) -> Any:
    """In a thread of its own, so it works beside Playwright's loop in the same session."""
    result: List[Any] = []
    errors: List[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def stored_senders(bot) -> List[str]:
    with sqlite3.connect(bot.workdir / "tracker.db") as connection:
        return [row[0] for row in connection.execute("SELECT DISTINCT sender_id FROM events")]


def test_another_visitors_session_can_be_neither_joined_nor_spoken_in(bot):
    async def attack() -> None:
        victim, attacker = Visitor(bot), Visitor(bot)
        victim_id = await victim.join()
        assert said(await victim.say("押金能退吗"), "utter_deposit")
        conversation = "web:" + victim_id.split(".")[0]

        # Rasa's own channel takes any session id a socket names. Here only a signed one.
        for forged in (victim_id.split(".")[0], conversation, victim_id.split(".")[0] + ".AAAAAAAAAAAAAAAAAAAAAA"):
            given = await attacker.join(forged)
            assert given != victim_id and given.split(".")[0] != victim_id.split(".")[0]
        # Naming the victim's session in a message, without having joined it, is refused.
        for named in (victim_id, victim_id.split(".")[0], conversation):
            texts = await attacker.say("SEC00001", session_id=named)
            assert texts == [render("utter_web_session_invalid")]
        # The victim's conversation got none of it, and the victim saw none of it.
        victim_answers = len(victim.answers)
        assert said(await victim.say("违约金怎么算"), "utter_termination_fee")
        assert len(victim.answers) > victim_answers
        assert not any(said([answer.get("text", "")], "utter_web_session_invalid") for answer in victim.answers)
        assert conversation in stored_senders(bot)  # stored under the channel's prefix
        await victim.close()
        await attacker.close()

    run(attack())


def test_a_reload_brings_its_own_signed_session_back(bot):
    add_terminal(bot, "SEC00031", "1357")

    async def reload() -> None:
        tab = Visitor(bot)
        session_id = await tab.join()
        assert said(await tab.say("查询终端状态"), "utter_ask_terminal_id")
        await tab.close()
        again = Visitor(bot)  # the page reloaded: a new socket, the id from sessionStorage
        assert await again.join(session_id) == session_id
        # The same conversation: the lookup goes on where it was.
        assert said(await again.say("SEC00031"), "utter_ask_phone_tail")
        await again.close()

    run(reload())


def test_a_flood_over_one_websocket_is_slowed_down_politely(bot):
    async def flood() -> List[str]:
        # Through the local proxy for one outside client: the HTTP limit sees only the connect.
        visitor = Visitor(bot, headers={"X-Forwarded-For": "203.0.113.77"})
        session_id = await visitor.join()
        for _ in range(40):
            await visitor.client.emit("user_uttered", {"message": "你好", "session_id": session_id})
        await visitor.say("你好", wait=20)  # the last answers come in
        await asyncio.sleep(2)
        await visitor.close()
        return [answer.get("text", "") for answer in visitor.answers]

    texts = run(flood())
    limited = texts.count(render("utter_rate_limited"))
    assert 9 <= limited <= 11  # the default: 30 a minute, as a burst; one back every 2 s
    assert sum(said([text], "utter_greet") for text in texts) >= 29  # the rest were answered


def test_visitors_leaving_leave_no_errors_in_the_log(bot):
    async def come_and_go() -> None:
        for _ in range(3):
            visitor = Visitor(bot)
            await visitor.join()
            assert said(await visitor.say("你好"), "utter_greet")
            await visitor.close()
        await asyncio.sleep(1)

    run(come_and_go())
    log = bot.rasa.log_path.read_text(encoding="utf-8", errors="replace")
    # Sanic logs a closed engine.io WebSocket as a server error unless told it is one.
    assert "Invalid response type" not in log and "Exception occurred while handling uri" not in log
