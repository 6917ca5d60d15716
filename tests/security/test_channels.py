"""Requests a stranger can send to the Rasa server's channels."""
import http.client


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
