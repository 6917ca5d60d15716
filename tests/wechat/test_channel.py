"""The channel over HTTP, in front of a scripted agent: verification and rejections, each
message type and event, numbered options, dedupe and WeChat's 5-second clock."""
import http.client
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from lakala_server.wechat.render import load_texts
from lakala_server.wechat.simulator import cdata, sign
from tests.support.servers import ROOT
from tests.wechat.conftest import SETTINGS, split_reply

TEXTS = load_texts(ROOT / "domain.yml")


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


def test_a_captured_request_replayed_later_is_refused_or_ignored(agent):
    sim, openid = agent.sim(), new_user()
    url, body = sim.envelope(sim.text(openid, "押金能退吗"))
    assert sim.post(url, body).status == 200
    replay = sim.post(url, body)
    assert (replay.status, replay.body) == (200, b"success")
    assert len(agent.received(openid)) == 1


# --- message types and events -----------------------------------------------------------------

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


def test_voice_without_recognition_asks_for_text(agent):
    sim, openid = agent.sim(), new_user()
    assert sim.deliver(sim.voice(openid, None)).reply == TEXTS.voice_unrecognized
    assert sim.deliver(sim.voice(openid, "  ")).reply == TEXTS.voice_unrecognized
    assert agent.received(openid) == []


@pytest.mark.parametrize("kind", ["image", "location", "video", "shortvideo", "link", "file"])
def test_other_messages_are_told_only_text_is_understood(agent, kind):
    sim, openid = agent.sim(), new_user()
    if kind in ("image", "location"):
        xml = getattr(sim, kind)(openid)
    else:
        xml = sim._xml(openid, kind, {"MediaId": "m", "Title": "t", "MsgId": sim.new_msg_id()})
    assert sim.deliver(xml).reply == TEXTS.unsupported
    assert agent.received(openid) == []


def test_following_greets_with_numbered_options(agent):
    sim, openid = agent.sim(), new_user()
    texts, options = split_reply(sim.deliver(sim.event(openid, "subscribe", "")).reply)
    assert texts == ["欢迎关注"]
    assert options == [(1, "查询终端状态"), (2, "押金能退吗")]
    assert agent.received(openid)[0]["text"] == "/greet"


def test_following_through_a_qr_code_also_greets(agent):
    sim, openid = agent.sim(), new_user()
    assert sim.deliver(sim.event(openid, "subscribe", "qrscene_123")).reply.startswith("欢迎关注")


def test_unfollowing_ends_the_conversation_silently(agent):
    sim, openid = agent.sim(), new_user()
    sim.deliver(sim.event(openid, "subscribe", ""))
    outcome = sim.deliver(sim.event(openid, "unsubscribe", ""))
    assert outcome.acknowledged and outcome.attempts[-1].body == b"success"
    assert [m["text"] for m in agent.received(openid)] == ["/greet", "/restart"]
    # The options offered before are gone with the conversation.
    sim.deliver(sim.text(openid, "1"))
    assert agent.received(openid)[-1]["text"] == "1"


def test_a_menu_click_is_its_key_as_a_button(agent):
    sim, openid = agent.sim(), new_user()
    assert sim.deliver(sim.event(openid, "CLICK", "/check_terminal_status")).reply == "收到：/check_terminal_status"


@pytest.mark.parametrize("event, key", [("VIEW", "https://example.com"), ("LOCATION", None), ("SCAN", "123"),
                                        ("TEMPLATESENDJOBFINISH", None), ("some_future_event", None)])
def test_other_events_are_acknowledged_without_reply(agent, event, key):
    sim, openid = agent.sim(), new_user()
    outcome = sim.deliver(sim.event(openid, event, key))
    assert outcome.acknowledged
    assert agent.received(openid) == []


# --- numbered options -----------------------------------------------------------------------------

def test_a_number_or_an_option_text_is_the_button_payload(agent):
    sim, openid = agent.sim(), new_user()
    # Events are deduplicated by sender and CreateTime, so each follow gets its own second.
    now = int(time.time())
    sim.deliver(sim.event(openid, "subscribe", "", create_time=now))
    assert sim.deliver(sim.text(openid, "1")).reply == "收到：/check_terminal_status"
    sim.deliver(sim.event(openid, "subscribe", "", create_time=now + 1))
    assert sim.deliver(sim.text(openid, "押金能退吗")).reply == "收到：押金能退吗"
    sim.deliver(sim.event(openid, "subscribe", "", create_time=now + 2))
    assert sim.deliver(sim.voice(openid, "查询终端状态。")).reply == "收到：/check_terminal_status"


def test_options_are_numbered_across_messages_and_expire_with_the_turn(agent):
    sim, openid = agent.sim(), new_user()
    texts, options = split_reply(sim.deliver(sim.text(openid, "two")).reply)
    assert texts == ["第一条", "第二条"] and options == [(1, "甲"), (2, "乙")]
    assert sim.deliver(sim.text(openid, "２")).reply == "收到：/deny"
    assert sim.deliver(sim.text(openid, "2")).reply == "收到：2"


def test_a_number_outside_the_options_is_plain_text(agent):
    sim, openid = agent.sim(), new_user()
    sim.deliver(sim.event(openid, "subscribe", ""))
    assert sim.deliver(sim.text(openid, "3")).reply == "收到：3"


def test_typed_intent_payloads_are_not_obeyed(agent):
    sim, openid = agent.sim(), new_user()
    assert sim.deliver(sim.text(openid, "/request_deregistration")).reply == "收到：request_deregistration"


def test_failures_still_get_an_answer(agent):
    sim, openid = agent.sim(), new_user()
    failed = split_reply(sim.deliver(sim.text(openid, "fail")).reply)
    silent = split_reply(sim.deliver(sim.text(openid, "silent")).reply)
    assert failed == silent
    assert failed[0][0].startswith("抱歉，系统暂时出了点问题")


# --- dedupe and WeChat's clock --------------------------------------------------------------------

def test_a_retried_message_is_handled_once(agent):
    sim, openid = agent.sim(), new_user()
    url, body = sim.envelope(sim.text(openid, "押金能退吗"))
    first, again = sim.post(url, body), sim.post(url, body)
    assert b"<Encrypt>" in first.body and again.body == b"success"
    assert len(agent.received(openid)) == 1


def test_a_retried_event_is_handled_once(agent):
    sim, openid = agent.sim(), new_user()
    created = int(time.time())
    first = sim.deliver(sim.event(openid, "subscribe", "", create_time=created))
    again = sim.deliver(sim.event(openid, "subscribe", "", create_time=created))
    assert first.reply and again.acknowledged
    assert [m["text"] for m in agent.received(openid)] == ["/greet"]


def test_concurrent_deliveries_share_one_answer(agent):
    sim, openid = agent.sim(), new_user()
    url, body = sim.envelope(sim.text(openid, "slow 1"))
    with ThreadPoolExecutor(4) as pool:
        attempts = list(pool.map(lambda _: sim.post(url, body), range(4)))
    replies = [a for a in attempts if a.body != b"success"]
    assert all(a.status == 200 and a.seconds < 5 for a in attempts)
    assert len(replies) == 1
    assert sim.read_reply(replies[0].body, openid)["Content"] == "慢回答：slow 1"
    assert len(agent.received(openid)) == 1


def test_without_appsecret_a_slow_answer_comes_on_wechats_retry(agent):
    sim, openid = agent.sim(), new_user()
    outcome = sim.deliver(sim.text(openid, "slow 7"))
    assert [a.timed_out for a in outcome.attempts] == [True, False]
    assert outcome.reply == "慢回答：slow 7"
    assert outcome.attempts[1].seconds < 4.5
    assert len(agent.received(openid)) == 1


def test_without_appsecret_an_answer_later_than_every_retry_comes_with_the_next_reply(agent):
    sim, openid = agent.sim(), new_user()
    outcome = sim.deliver(sim.text(openid, "slow 16"))
    assert [a.timed_out for a in outcome.attempts] == [True, True, False]
    assert outcome.attempts[2].seconds < 5
    assert outcome.reply == TEXTS.still_working
    time.sleep(2.5)  # the answer is ready 16 s after the first delivery
    texts, _ = split_reply(sim.deliver(sim.text(openid, "好了吗")).reply)
    assert texts == ["慢回答：slow 16", "收到：好了吗"]


def test_with_appsecret_a_slow_answer_is_acknowledged_then_sent_as_a_customer_service_message(agent_with_api):
    sim, openid = agent_with_api.sim(), new_user()
    started = time.monotonic()
    outcome = sim.deliver(sim.text(openid, "slow 6"))
    assert outcome.acknowledged and len(outcome.attempts) == 1 and outcome.attempts[0].seconds < 5
    deadline = started + 10
    while not agent_with_api.api.messages_to(openid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent_with_api.api.messages_to(openid) == ["慢回答：slow 6"]
    time.sleep(1)
    assert agent_with_api.api.messages_to(openid) == ["慢回答：slow 6"]
    assert len(agent_with_api.received(openid)) == 1


def test_with_appsecret_the_retry_takes_an_answer_ready_by_then(agent_with_api):
    # WeChat did not get the acknowledgement in time (it gave up at 3 s), so it retries.
    sim, openid = agent_with_api.sim(), new_user()
    url, body = sim.envelope(sim.text(openid, "slow 5"))
    first = sim.post(url, body, timeout=3)
    retry = sim.post(url, body)
    assert first.timed_out and retry.status == 200 and retry.seconds < 4.5
    assert sim.read_reply(retry.body, openid)["Content"] == "慢回答：slow 5"
    time.sleep(1)
    assert agent_with_api.api.messages_to(openid) == []
    assert len(agent_with_api.received(openid)) == 1


def test_a_failed_customer_service_message_comes_with_the_next_reply(agent_with_api):
    sim, openid = agent_with_api.sim(), new_user()
    agent_with_api.api.fail_next_send(45015)
    assert sim.deliver(sim.text(openid, "slow 4.5")).acknowledged
    time.sleep(1.5)
    texts, _ = split_reply(sim.deliver(sim.text(openid, "在吗")).reply)
    assert texts == ["慢回答：slow 4.5", "收到：在吗"]


def test_a_long_answer_is_split_between_the_reply_and_customer_service_messages(agent_with_api):
    sim, openid = agent_with_api.sim(), new_user()
    reply = sim.deliver(sim.text(openid, "long")).reply
    assert len(reply.encode("utf-8")) <= 2048
    deadline = time.monotonic() + 5
    while not agent_with_api.api.messages_to(openid) and time.monotonic() < deadline:
        time.sleep(0.1)
    rest = agent_with_api.api.messages_to(openid)
    assert "\n".join([reply] + rest) == "\n".join(["长" * 100] * 10)


def test_the_acknowledgement_is_on_time_under_load(agent_with_api):
    sim = agent_with_api.sim()
    users = [new_user() for _ in range(12)]
    barrier = threading.Barrier(len(users))

    def one(openid):
        barrier.wait()
        return sim.deliver(sim.text(openid, "slow 4.5" if openid == users[0] else "押金能退吗"))

    with ThreadPoolExecutor(len(users)) as pool:
        outcomes = list(pool.map(one, users))
    assert all(len(o.attempts) == 1 and o.attempts[0].seconds < 4.6 for o in outcomes)
    assert outcomes[0].acknowledged and all(o.reply for o in outcomes[1:])
