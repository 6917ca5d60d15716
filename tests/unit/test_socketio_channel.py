"""The web chat's socket.io channel: allowed origins, and an answer to every message."""
import asyncio
import threading
from typing import Any, List, Tuple

import pytest

from lakala_server.fallback import failure_message
from lakala_server.socketio import DEFAULT_ALLOWED_ORIGINS, SafeSocketIOInput, allowed_origins


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
    handle_message = channel.sio.handlers["/"]["user_uttered"]
    run(handle_message("sid-1", {"message": "押金能退吗", "session_id": "session-1"}))
    assert emitted == [("bot_uttered", {"text": failure_message()["text"], "quick_replies": [
        {"content_type": "text", "title": button["title"], "payload": button["payload"]}
        for button in failure_message()["buttons"]
    ]}, "session-1")]
