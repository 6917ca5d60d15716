"""The web chat's socket.io channel: allowed origins, and an answer to every message."""
import asyncio
import threading
from typing import Any, List, Tuple

import pytest
from rasa.core.channels.channel import UserMessage

from lakala_server.fallback import failure_message
from lakala_server.socketio import (
    DEFAULT_ALLOWED_ORIGINS,
    SafeSocketIOInput,
    SessionIds,
    allowed_origins,
    invalid_session_message,
)


def test_origins_default_to_the_local_web_chat(monkeypatch):
    monkeypatch.delenv("WEB_ALLOWED_ORIGINS", raising=False)
    assert allowed_origins() == DEFAULT_ALLOWED_ORIGINS.split(",")
    assert "*" not in allowed_origins()


def test_origins_from_the_environment(monkeypatch):
    monkeypatch.setenv("WEB_ALLOWED_ORIGINS", " https://www.example.com/ ,https://chat.example.com")
    assert allowed_origins() == ["https://www.example.com", "https://chat.example.com"]
    assert allowed_origins("*") == "*"
    with pytest.raises(ValueError):
        allowed_origins(" , ")  # engine.io would read an empty list as "allow everyone"


def channel_and_emitted(monkeypatch) -> Tuple[SafeSocketIOInput, List[Tuple[Any, ...]]]:
    monkeypatch.setenv("WEB_ALLOWED_ORIGINS", "https://www.example.com")
    channel = SafeSocketIOInput.from_credentials({"session_persistence": True})

    async def silent(message) -> None:  # a turn that produced no reply
        return None

    channel.blueprint(silent)
    emitted: List[Tuple[Any, ...]] = []

    async def emit(event: str, data: Any = None, room: Any = None, **kwargs: Any) -> None:
        emitted.append((event, data, room))

    channel.sio.emit = emit
    channel.sio.enter_room = lambda sid, room, namespace=None: None  # no real socket here
    return channel, emitted


def test_the_socketio_server_checks_origins(monkeypatch):
    channel, _ = channel_and_emitted(monkeypatch)
    assert channel.sio.eio.cors_allowed_origins == ["https://www.example.com"]


def run(coroutine: Any) -> None:
    # In a thread of its own: Playwright's sync API keeps a loop running in the main thread
    # when the browser tests run in the same session.
    thread = threading.Thread(target=asyncio.run, args=(coroutine,))
    thread.start()
    thread.join()


def test_a_silent_turn_is_answered_with_the_failure_response(monkeypatch):
    channel, emitted = channel_and_emitted(monkeypatch)
    handlers = channel.sio.handlers["/"]
    run(handlers["session_request"]("sid-1", {"session_id": None}))
    session_id = emitted.pop()[1]
    run(handlers["user_uttered"]("sid-1", {"message": "押金能退吗", "session_id": session_id}))
    assert emitted == [("bot_uttered", {"text": failure_message()["text"], "quick_replies": [
        {"content_type": "text", "title": button["title"], "payload": button["payload"]}
        for button in failure_message()["buttons"]
    ]}, "web:" + session_id.split(".")[0])]


def test_session_ids_are_signed_and_name_a_web_conversation():
    ids, other_server = SessionIds(b"k" * 32), SessionIds(b"o" * 32)
    session_id = ids.issue()
    session, mac = session_id.split(".")
    assert ids.conversation(session_id) == "web:" + session
    assert ids.issue() != session_id
    for forged in (session, "web:" + session, f"{session}.{mac[:-1]}A" if mac[-1] != "A" else f"{session}.{mac[:-1]}B",
                   other_server.issue(), f"{session}.{mac}.x", None, 42, "", "." * 3, "x" * 500):
        assert ids.conversation(forged) is None, forged


def bound_channel(monkeypatch):
    monkeypatch.setenv("WEB_ALLOWED_ORIGINS", "https://www.example.com")
    monkeypatch.setenv("WEB_SESSION_SECRET", "unit-test-secret")
    channel = SafeSocketIOInput.from_credentials({"session_persistence": True})
    received: List[UserMessage] = []

    async def on_new_message(message: UserMessage) -> None:
        received.append(message)
        await message.output_channel.send_response(message.sender_id, {"text": "答"})

    channel.blueprint(on_new_message)
    emitted: List[Tuple[Any, ...]] = []
    rooms: List[Tuple[str, str, str]] = []

    async def emit(event: str, data: Any = None, room: Any = None, **kwargs: Any) -> None:
        emitted.append((event, data, room))

    channel.sio.emit = emit
    channel.sio.enter_room = lambda sid, room, namespace=None: rooms.append(("enter", sid, room))
    channel.sio.leave_room = lambda sid, room, namespace=None: rooms.append(("leave", sid, room))
    return channel, received, emitted, rooms


def test_a_socket_speaks_only_in_the_session_it_joined(monkeypatch):
    channel, received, emitted, rooms = bound_channel(monkeypatch)
    handlers = channel.sio.handlers["/"]
    run(handlers["session_request"]("victim", None))
    victim_id = emitted.pop()[1]
    victim_room = "web:" + victim_id.split(".")[0]
    assert rooms == [("enter", "victim", victim_room)]

    # An unsigned or foreign id is replaced by a new one; a signed one (a reload) is kept.
    for forged in (victim_id.split(".")[0], victim_room, "made-up"):
        run(handlers["session_request"]("attacker", {"session_id": forged}))
        assert emitted.pop()[1] not in (victim_id, forged)
    run(handlers["session_request"]("reloaded", {"session_id": victim_id}))
    assert emitted.pop() == ("session_confirm", victim_id, "reloaded")

    refused = render_invalid_session()
    for named in (victim_id, victim_room, None):
        run(handlers["user_uttered"]("attacker", {"message": "SEC00001", "session_id": named}))
        assert emitted.pop() == ("bot_uttered", refused, "attacker")
    run(handlers["user_uttered"]("never-joined", {"message": "你好", "session_id": victim_id}))
    assert emitted.pop() == ("bot_uttered", refused, "never-joined")
    run(handlers["user_uttered"]("victim", ["not", "a", "dict"]))
    assert emitted.pop() == ("bot_uttered", refused, "victim")
    assert received == []

    run(handlers["user_uttered"]("victim", {"message": "押金能退吗", "session_id": victim_id}))
    assert [(m.sender_id, m.text, m.input_channel) for m in received] == [(victim_room, "押金能退吗", "socketio")]
    assert emitted.pop() == ("bot_uttered", {"text": "答"}, victim_room)

    # After a disconnect the socket's session is forgotten.
    run(handlers["disconnect"]("victim"))
    assert "victim" not in channel.joined
    run(handlers["user_uttered"]("victim", {"message": "你好", "session_id": victim_id}))
    assert emitted.pop() == ("bot_uttered", refused, "victim")


def test_joining_another_session_leaves_the_first(monkeypatch):
    channel, _, emitted, rooms = bound_channel(monkeypatch)
    handlers = channel.sio.handlers["/"]
    run(handlers["session_request"]("tab", None))
    first = emitted.pop()[1]
    second = channel.session_ids.issue()
    run(handlers["session_request"]("tab", {"session_id": second}))
    assert rooms[-2:] == [("leave", "tab", "web:" + first.split(".")[0]),
                          ("enter", "tab", "web:" + second.split(".")[0])]


def render_invalid_session() -> dict:
    return invalid_session_message()
