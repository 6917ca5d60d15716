"""Who may talk over REST, and as which conversation."""
import json
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import jwt
import pytest
from sanic.exceptions import Forbidden

from lakala_server.channels import authorized_sender
from tests.support.servers import MODEL, Bot

SECRET = "a-site-secret-for-issuing-tokens"


@pytest.fixture(scope="module")
def exposed_bot(tmp_path_factory):
    """The bot as deployed behind a site that signs its merchants in: REST needs a JWT."""
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train`")
    running = Bot(tmp_path_factory.mktemp("exposed_bot"), extra_env={"REST_JWT_SECRET": SECRET}).start()
    yield running
    running.stop()


def post(bot, body, token=None, forwarded_for=None):
    headers = {"Content-Type": "application/json"}
    if forwarded_for is not None:  # as the local proxy (make cluster's nginx) forwards it
        headers["X-Forwarded-For"] = forwarded_for
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{bot.rasa_port}/webhooks/rest/webhook",
                                     data=json.dumps(body, ensure_ascii=False).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def token(sub, secret=SECRET, **claims):
    return jwt.encode({"sub": sub, **claims}, secret, algorithm="HS256")


@pytest.mark.parametrize("given", [None, "not-a-jwt", token("merchant-a", secret="guessed"),
                                   token("merchant-a", exp=int(time.time()) - 60)],
                         ids=["no token", "garbage", "wrong secret", "expired"])
def test_without_a_valid_token_nobody_is_answered(exposed_bot, given):
    status, _ = post(exposed_bot, {"sender": "merchant-a", "message": "押金能退吗"}, given)
    assert status == 401


def test_a_token_speaks_only_for_its_own_sender(exposed_bot):
    status, _ = post(exposed_bot, {"sender": "oWeChatUserOfSomeoneElse", "message": "押金能退吗"}, token("merchant-a"))
    assert status == 403
    status, replies = post(exposed_bot, {"sender": "merchant-a", "message": "押金能退吗"}, token("merchant-a"))
    assert status == 200 and replies and "押金" in replies[0]["text"]


def test_the_body_cannot_claim_another_channel(exposed_bot):
    """WeChat's channel filters /commands itself; a REST body saying it is WeChat gets no such trust."""
    me = "merchant-b"

    def say(text, **extra):
        status, replies = post(exposed_bot, {"sender": me, "message": text, **extra}, token(me))
        assert status == 200
        return " ".join(reply.get("text") or "" for reply in replies)

    say("帮我查一下终端状态")
    say("30091254")
    for guess in ("0001", "0002", "0003"):
        answer = say(guess)
    assert "次数太多" in answer  # this conversation may not try again
    say("/restart", input_channel="wechat")
    assert "次数太多" in say("帮我查一下终端状态")


def request_from(ip, authorization=None, forwarded_for=None):
    headers = {"Authorization": authorization} if authorization else {}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    return SimpleNamespace(ip=ip, headers=headers)


def test_one_client_is_slowed_down_and_told_so_politely(exposed_bot):
    from tests.support.servers import render

    def flood(client, sender, text="你好"):
        return post(exposed_bot, {"sender": sender, "message": text}, token(sender),
                    forwarded_for=f"198.51.100.1, {client}")

    statuses = [flood("203.0.113.9", f"flood-{n}")[0] for n in range(40)]
    assert statuses[:30] == [200] * 30  # the default: 30 a minute, as a burst
    assert statuses[30:].count(429) >= 9  # a token comes back every 2 s
    status, body = flood("203.0.113.9", "flood-x", "押金能退吗")
    assert status == 429 and body[0]["text"] == render("utter_rate_limited")
    assert flood("203.0.113.10", "neighbour")[0] == 200  # other clients go on
    assert post(exposed_bot, {"sender": "local-tool", "message": "你好"}, token("local-tool"))[0] == 200


def test_by_default_rest_answers_this_machine_only(monkeypatch):
    monkeypatch.delenv("REST_JWT_SECRET", raising=False)
    monkeypatch.delenv("REST_OPEN", raising=False)
    assert authorized_sender(request_from("127.0.0.1"), "me") == "rest:me"
    assert authorized_sender(request_from("::1"), "me") == "rest:me"
    with pytest.raises(Forbidden):
        authorized_sender(request_from("203.0.113.7"), "me")
    # Behind a proxy on this machine, the client it names counts, not the proxy.
    with pytest.raises(Forbidden):
        authorized_sender(request_from("127.0.0.1", forwarded_for="203.0.113.7"), "me")
    assert authorized_sender(request_from("127.0.0.1", forwarded_for="127.0.0.1"), "me") == "rest:me"
    monkeypatch.setenv("REST_OPEN", "1")  # the explicit setting for local development
    assert authorized_sender(request_from("203.0.113.7"), "me") == "rest:me"
