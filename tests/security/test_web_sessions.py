"""The web chat's socket.io sessions, attacked the way a stranger would: another visitor's
session id, guessed or copied without its signature, and a flood over one WebSocket."""
import asyncio
import json
import sqlite3
from typing import Any, Dict, List

from tests.security.test_guessing import add_terminal
from tests.support.expect import said
from tests.support.servers import render
from tests.support.webchat import Visitor, run


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


def user_events(bot, conversation: str) -> List[Dict[str, Any]]:
    """The user messages the tracker store kept for a conversation, in order."""
    with sqlite3.connect(bot.workdir / "tracker.db") as connection:
        rows = connection.execute("SELECT data FROM events WHERE sender_id = ? AND type_name = 'user' ORDER BY id",
                                  (conversation,)).fetchall()
    return [json.loads(row[0]) for row in rows]


def test_a_socket_speaks_only_in_the_session_it_joined(bot):
    refused = {"text": render("utter_web_session_invalid")}

    async def scenario() -> None:
        victim, attacker = Visitor(bot), Visitor(bot)
        victim_id = await victim.join()
        victim_room = "web:" + victim_id.split(".")[0]

        # An unsigned or foreign id is replaced by a new one; a signed one (a reload) is kept.
        for forged in (victim_id.split(".")[0], victim_room, "made-up"):
            assert await attacker.join(forged) not in (victim_id, forged)
        reloaded = Visitor(bot)
        assert await reloaded.join(victim_id) == victim_id

        for named in (victim_id, victim_room, None):
            await attacker.send({"message": "SEC00001", "session_id": named})
            assert attacker.answers[-1] == refused
        never_joined = Visitor(bot)
        await never_joined.connect()
        await never_joined.send({"message": "你好", "session_id": victim_id})
        assert never_joined.answers == [refused]
        await victim.send(["not", "a", "dict"])
        assert victim.answers == [refused]
        assert reloaded.answers == []  # nothing refused went to the session's room
        assert user_events(bot, victim_room) == []  # and nothing reached the conversation

        assert said(await victim.say("押金能退吗"), "utter_deposit")
        stored = user_events(bot, victim_room)
        assert [(event["text"], event["input_channel"]) for event in stored] == [("押金能退吗", "socketio")]
        assert reloaded.answers == victim.answers[1:]  # the answer went to the session's sockets

        # After a disconnect the socket's session is forgotten: the same client, connected
        # again, may not speak in it without joining it first.
        await victim.close()
        victim.answers.clear()
        await victim.connect()
        await victim.send({"message": "你好", "session_id": victim_id})
        assert victim.answers == [refused]
        assert len(user_events(bot, victim_room)) == 1
        for visitor in (victim, attacker, reloaded, never_joined):
            await visitor.close()

    run(scenario())


def test_joining_another_session_leaves_the_first(bot):
    async def scenario() -> None:
        tab, other, back = Visitor(bot), Visitor(bot), Visitor(bot)
        first = await tab.join()
        second = await other.join()
        assert await tab.join(second) == second  # the tab moves to the second session
        assert await back.join(first) == first  # and a reload brings the first back elsewhere
        assert said(await back.say("你好"), "utter_greet")
        assert tab.answers == []  # the first session's answers no longer reach the tab
        assert said(await other.say("押金能退吗"), "utter_deposit")
        assert tab.answers == other.answers  # the second's do
        for visitor in (tab, other, back):
            await visitor.close()

    run(scenario())


def test_an_oversized_socket_message_is_refused_before_the_bot_reads_it(bot):
    async def oversized() -> Any:
        visitor = Visitor(bot)
        session_id = await visitor.join()
        await visitor.client.emit("user_uttered", {"message": "押" * 40_000, "session_id": session_id})  # 120 KB
        for _ in range(50):
            if not visitor.client.connected:
                break
            await asyncio.sleep(0.1)
        dropped = not visitor.client.connected
        await visitor.close()
        return dropped, visitor.answers

    dropped, answers = run(oversized())
    # engine.io refuses a frame over MAX_REQUEST_KB (64 KB) and closes that connection, as REST answers 413.
    assert dropped and answers == []
    neighbour = Visitor(bot)
    assert said(run(_join_and_say(neighbour, "你好，押金押金")), "utter_deposit")  # the server goes on
    with sqlite3.connect(bot.workdir / "tracker.db") as connection:
        def stored(text: str) -> int:
            return connection.execute("SELECT COUNT(*) FROM events WHERE data LIKE ?", (f"%{text}%",)).fetchone()[0]

        assert stored("你好，押金押金") > 0  # what was read is stored, in clear Chinese
        assert stored("押" * 100) == 0


async def _join_and_say(visitor: Visitor, text: str) -> List[str]:
    await visitor.join()
    texts = await visitor.say(text)
    await visitor.close()
    return texts
