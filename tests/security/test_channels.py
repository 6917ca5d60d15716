"""Requests a stranger can send to the Rasa server's channels."""
import http.client
import json


def announce(bot, path: str, size: int) -> int:
    """The status of a POST that announces `size` bytes and sends none of them."""
    connection = http.client.HTTPConnection("127.0.0.1", bot.rasa_port, timeout=10)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(size))
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_huge_body_is_refused_before_it_is_read(bot):
    # Sanic would read up to 100 MB before the channel saw the request.
    assert announce(bot, "/webhooks/rest/webhook", 100 * 1024 * 1024) == 413
    assert announce(bot, "/webhooks/rest/webhook", 65 * 1024) == 413
    assert bot.texts("after-the-huge-one", "你好")  # the server still answers


def polling(bot, origin: str, sid: str = "", body: str = ""):
    """An engine.io long-polling request from a page on `origin`: (status, body, CORS header)."""
    connection = http.client.HTTPConnection("127.0.0.1", bot.rasa_port, timeout=10)
    try:
        path = "/socket.io/?EIO=4&transport=polling" + (f"&sid={sid}" if sid else "")
        headers = {"Origin": origin, "Content-Type": "text/plain;charset=UTF-8"}
        connection.request("POST" if body else "GET", path, body=body.encode() if body else None, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read().decode("utf-8", "replace"), answer.getheader("Access-Control-Allow-Origin")
    finally:
        connection.close()


def test_the_polling_transport_refuses_other_origins(bot):
    # The web chat's own page (the default WEB_ALLOWED_ORIGINS) opens a session ...
    status, body, cors = polling(bot, "http://127.0.0.1:8080")
    assert (status, body[:1], cors) == (200, "0", "http://127.0.0.1:8080")  # engine.io's "open" packet
    sid = json.loads(body[1:])["sid"]
    # ... which a page elsewhere can neither open nor write into: a browser's visitor there
    # would otherwise talk to the bot in their own name from a stranger's site.
    for origin in ("https://evil.example", "http://127.0.0.1:8081", "http://localhost.evil.example:8080"):
        assert polling(bot, origin) == (400, json.dumps(f"{origin} is not an accepted origin."), None), origin
        status, _, cors = polling(bot, origin, sid=sid, body='40{"session_id": null}')
        assert (status, cors) == (400, None), origin
    assert polling(bot, "http://localhost:8080", sid=sid, body="40")[0] == 200  # the other default origin
