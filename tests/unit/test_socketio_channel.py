"""The web chat's socket.io channel: allowed origins and signed session ids.

What the channel does with messages (an answer to every message, a socket speaking only in
the session it joined) is tested against the real server with real socket.io clients:
tests/security/test_web_sessions.py and tests/e2e/test_resilience.py."""
import pytest

from lakala_server.socketio import DEFAULT_ALLOWED_ORIGINS, SafeSocketIOInput, SessionIds, allowed_origins


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


def test_the_socketio_server_checks_origins(monkeypatch):
    monkeypatch.setenv("WEB_ALLOWED_ORIGINS", "https://www.example.com")
    channel = SafeSocketIOInput.from_credentials({"session_persistence": True})

    async def never_called(message) -> None:
        raise AssertionError("no message is handled here")

    channel.blueprint(never_called)
    assert channel.sio.eio.cors_allowed_origins == ["https://www.example.com"]


def test_session_ids_are_signed_and_name_a_web_conversation():
    ids, other_server = SessionIds(b"k" * 32), SessionIds(b"o" * 32)
    session_id = ids.issue()
    session, mac = session_id.split(".")
    assert ids.conversation(session_id) == "web:" + session
    assert ids.issue() != session_id
    for forged in (session, "web:" + session, f"{session}.{mac[:-1]}A" if mac[-1] != "A" else f"{session}.{mac[:-1]}B",
                   other_server.issue(), f"{session}.{mac}.x", None, 42, "", "." * 3, "x" * 500):
        assert ids.conversation(forged) is None, forged
