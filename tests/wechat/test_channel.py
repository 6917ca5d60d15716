"""Pure protocol checks over HTTP, in front of a scripted agent (tests/wechat/fake_agent.py):
verification and rejections, each request verified and parsed once, the encryption modes,
XML-looking text, a failing bot, and WeChat's size limit. Everything else a merchant meets
runs against the real bot (test_real_bot.py, test_real_bot_without_api.py)."""
import http.client
import time
import urllib.parse
import uuid

import pytest

from lakala_server.wechat.simulator import cdata, sign
from tests.wechat.conftest import SETTINGS, split_reply


def new_user() -> str:
    return "o" + uuid.uuid4().hex[:27]


def signed_query(timestamp=None, nonce="123456", token=SETTINGS["WECHAT_TOKEN"], **extra) -> dict:
    timestamp = timestamp or str(int(time.time()))
    return {"signature": sign(token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce, **extra}


# --- verification and rejections ----------------------------------------------------------------

def test_url_check_echoes_echostr_only_for_a_valid_signature(agent):
    sim = agent.sim()
    ok = sim.post(f"{agent.url}?{urllib.parse.urlencode(signed_query(echostr='5837397749332'))}", None)
    assert (ok.status, ok.body) == (200, b"5837397749332")
    forged = signed_query(echostr="5837397749332", token="someoneElse")
    bad = sim.post(f"{agent.url}?{urllib.parse.urlencode(forged)}", None)
    assert bad.status == 403 and b"5837397749332" not in bad.body
    missing = sim.post(f"{agent.url}?echostr=1", None)
    assert missing.status == 400


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<xml><ToUserName>{account}</ToUserName><FromUserName>{openid}</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&lol4;</Content><MsgId>1</MsgId></xml>"""
XXE = """<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>{account}</ToUserName><FromUserName>{openid}</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&secret;</Content><MsgId>2</MsgId></xml>"""


def rejection_cases():
    """(name, build) where build(sim, openid) returns (url, body) of a request to refuse."""

    def tampered_body(sim, openid):
        url, body = sim.envelope(sim.text(openid, "押金能退吗"))
        return url, body.replace(b"<Encrypt><![CDATA[", b"<Encrypt><![CDATA[A")

    def bad_signature(sim, openid):
        url, body = sim.envelope(sim.text(openid, "押金能退吗"))
        return url.replace("signature=", "signature=0"), body

    def bad_msg_signature(sim, openid):
        url, body = sim.envelope(sim.text(openid, "押金能退吗"))
        return url.replace("msg_signature=", "msg_signature=f"), body

    def stale(sim, openid):
        return sim.envelope(sim.text(openid, "押金能退吗"), timestamp=str(int(time.time()) - 3600))

    def wrong_appid(sim, openid):
        other = type(sim)(sim.url, SETTINGS["WECHAT_TOKEN"], "wx00000000000000ff", SETTINGS["WECHAT_ENCODING_AES_KEY"])
        return other.envelope(other.text(openid, "押金能退吗"))

    def wrong_key(sim, openid):
        other = type(sim)(sim.url, SETTINGS["WECHAT_TOKEN"], SETTINGS["WECHAT_APPID"], "Z" * 43)
        return other.envelope(other.text(openid, "押金能退吗"))

    def malformed(sim, openid):
        url, _ = sim.envelope(sim.text(openid, "x"))
        return url, b"<xml><Encrypt>unclosed"

    def not_base64(sim, openid):
        url, _ = sim.envelope(sim.text(openid, "x"))
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        query["msg_signature"] = sign(SETTINGS["WECHAT_TOKEN"], query["timestamp"], query["nonce"], "!!!notbase64")
        return f"{sim.url}?{urllib.parse.urlencode(query)}", b"<xml><Encrypt><![CDATA[!!!notbase64]]></Encrypt></xml>"

    def encrypted_entity(template):
        def build(sim, openid):
            return sim.envelope(template.format(account=sim.account, openid=openid))
        return build

    def plain_entity(template):
        def build(sim, openid):
            plain = type(sim)(sim.url, SETTINGS["WECHAT_TOKEN"], SETTINGS["WECHAT_APPID"],
                              SETTINGS["WECHAT_ENCODING_AES_KEY"], mode="plain")
            url, _ = plain.envelope(plain.text(openid, "x"))
            return url, template.format(account=sim.account, openid=openid).encode()
        return build

    def huge(sim, openid):
        url, _ = sim.envelope(sim.text(openid, "x"))
        return url, b"<xml><Encrypt>" + b"A" * 200_000 + b"</Encrypt></xml>"

    def unknown_mode(sim, openid):
        url, body = sim.envelope(sim.text(openid, "x"))
        return url.replace("encrypt_type=aes", "encrypt_type=rsa"), body

    def no_sender(sim, openid):
        return sim.envelope(sim.text("", "x"))

    def no_ciphertext(sim, openid):
        url, _ = sim.envelope(sim.text(openid, "x"))
        return url, f"<xml><ToUserName>{cdata(sim.account)}</ToUserName></xml>".encode()

    def downgraded(sim, openid):
        plain = type(sim)(sim.url, SETTINGS["WECHAT_TOKEN"], SETTINGS["WECHAT_APPID"],
                          SETTINGS["WECHAT_ENCODING_AES_KEY"], mode="plain")
        return plain.envelope(plain.text(openid, "押金能退吗"))

    def nonce_reused(sim, openid):
        # A captured plaintext request (its body is not signed) sent again with other words.
        url, body = sim.envelope(sim.text(f"{openid}_first", "押金能退吗"))
        assert sim.post(url, body).status == 200
        return url, sim.text(openid, "帮我把终端30091254注销了").encode()

    # (name, build, expected status or None for any 4xx, the account's message mode)
    return [
        ("bad signature", bad_signature, 403, "safe"), ("bad msg_signature", bad_msg_signature, 403, "safe"),
        ("tampered ciphertext", tampered_body, 403, "safe"), ("stale timestamp", stale, 403, "safe"),
        ("wrong AppID inside the ciphertext", wrong_appid, 403, "safe"),
        ("wrong EncodingAESKey", wrong_key, None, "safe"),
        ("malformed XML", malformed, 400, "safe"), ("ciphertext that is not base64", not_base64, 400, "safe"),
        ("XML bomb", plain_entity(BOMB), 400, "plaintext"), ("external entity", plain_entity(XXE), 400, "plaintext"),
        ("encrypted XML bomb", encrypted_entity(BOMB), 400, "safe"),
        ("encrypted external entity", encrypted_entity(XXE), 400, "safe"),
        ("oversized body", huge, 413, "safe"), ("unknown encrypt_type", unknown_mode, 400, "safe"),
        ("no FromUserName", no_sender, 400, "safe"), ("no Encrypt", no_ciphertext, 400, "safe"),
        ("plaintext sent to a safe-mode account", downgraded, 403, "safe"),
        ("timestamp and nonce reused with another body", nonce_reused, 403, "plaintext"),
    ]


ACCOUNTS = {"safe": "agent", "plaintext": "plain_agent"}


@pytest.mark.parametrize("name, build, status, account", rejection_cases(), ids=[c[0] for c in rejection_cases()])
def test_rejected_requests_never_reach_the_bot(request, name, build, status, account):
    agent = request.getfixturevalue(ACCOUNTS[account])
    sim, openid = agent.sim("safe" if account == "safe" else "plain"), new_user()
    url, body = build(sim, openid)
    attempt = sim.post(url, body)
    assert 400 <= attempt.status < 500, (name, attempt.status, attempt.body)
    if status:
        assert attempt.status == status, (name, attempt.body)
    assert agent.received(openid) == []


def test_a_body_announced_too_large_is_refused_before_it_is_read(agent):
    sim, openid = agent.sim(), new_user()
    url, _ = sim.envelope(sim.text(openid, "x"))
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.putrequest("POST", f"{parts.path}?{parts.query}")
    connection.putheader("Content-Length", str(100 * 1024 * 1024))
    connection.endheaders()  # announces 100 MB, sends none
    assert connection.getresponse().status == 413
    connection.close()
    assert agent.received(openid) == []


@pytest.mark.parametrize("account, mode, signatures, documents", [("safe", "safe", 2, 2), ("safe", "compat", 2, 2),
                                                                   ("plaintext", "plain", 1, 1)])
def test_each_message_is_verified_once_and_parsed_once(request, account, mode, signatures, documents):
    agent = request.getfixturevalue(ACCOUNTS[account])
    sim, openid = agent.sim(mode), new_user()
    before = agent.calls()
    assert sim.deliver(sim.text(openid, "押金能退吗")).reply == "收到：押金能退吗"
    after = agent.calls()
    made = {label: after[label] - before.get(label, 0) for label in after}
    # The URL's signature, and the msg_signature over an encrypted message: each checked once.
    assert made.get("signature checked", 0) == signatures
    assert made.get("signature checked by wechatpy", 0) == 0
    assert made.get("decrypted", 0) == signatures - 1
    # The envelope, and the decrypted message inside it: each XML document parsed once.
    assert made.get("XML parsed", 0) == documents
    assert made.get("XML parsed by xmltodict", 0) == 0


# --- message types and replies ------------------------------------------------------------------

@pytest.mark.parametrize("account, mode", [("safe", "compat"), ("safe", "safe"), ("plaintext", "plain"),
                                           ("plaintext", "compat")])
def test_text_in_every_encryption_mode(request, account, mode):
    agent = request.getfixturevalue(ACCOUNTS[account])
    sim, openid = agent.sim(mode), new_user()
    outcome = sim.deliver(sim.text(openid, "押金能退吗"))
    assert outcome.reply == "收到：押金能退吗"
    assert outcome.reply_xml["MsgType"] == "text"
    encrypted = b"<Encrypt>" in outcome.attempts[-1].body
    assert encrypted == (mode != "plain")
    assert [m["text"] for m in agent.received(openid)] == ["押金能退吗"]
    assert agent.received(openid)[0]["sender"] == "wechat:" + openid  # stored apart from other channels


def test_reply_text_that_looks_like_xml_survives(agent):
    sim, openid = agent.sim(), new_user()
    assert sim.deliver(sim.text(openid, "cdata")).reply == "a]]>b<c>&d"


def test_voice_with_recognition_is_a_text_message(agent):
    sim, openid = agent.sim(), new_user()
    assert sim.deliver(sim.voice(openid, "押金能退吗")).reply == "收到：押金能退吗"
    assert agent.received(openid)[0]["metadata"]["wechat"]["msg_type"] == "voice"


def test_failures_still_get_an_answer(agent):
    sim, openid = agent.sim(), new_user()
    failed = split_reply(sim.deliver(sim.text(openid, "fail")).reply)
    silent = split_reply(sim.deliver(sim.text(openid, "silent")).reply)
    assert failed == silent
    assert failed[0][0].startswith("抱歉，系统暂时出了点问题")


def test_a_long_answer_is_split_between_the_reply_and_customer_service_messages(agent_with_api):
    sim, openid = agent_with_api.sim(), new_user()
    reply = sim.deliver(sim.text(openid, "long")).reply
    assert len(reply.encode("utf-8")) <= 2048
    deadline = time.monotonic() + 5
    while not agent_with_api.api.messages_to(openid) and time.monotonic() < deadline:
        time.sleep(0.1)
    rest = agent_with_api.api.messages_to(openid)
    assert "\n".join([reply] + rest) == "\n".join(["长" * 100] * 10)


