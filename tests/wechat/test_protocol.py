"""WeChat's message crypto against its public test vectors, the channel's configuration,
option rendering, and the customer-service API client against the stand-in WeChat API."""
import asyncio
import time
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlsplit

import pytest
import xmltodict
import yaml
from rasa.core.run import create_http_input_channels
from rasa.shared.exceptions import InvalidConfigException, RasaException
from wechatpy import crypto as wechatpy_crypto
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.utils import check_signature

from lakala_server.wechat import WeChatInput
from lakala_server.wechat.api import CustomerServiceClient, WeChatAPIError, split_text
from lakala_server.wechat.envelope import Rejected
from lakala_server.wechat.render import Option, render, resolve_option
from lakala_server.wechat.simulator import FakeWeChatAPI, WeChatSimulator
from tests.support.servers import ROOT
from tests.wechat.conftest import SETTINGS

# wechatpy's own test suite (tests/test_crypto.py, tests/test_utils.py).
WECHATPY = {"token": "123456", "key": "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR", "appid": "wx49f0ab532d5d035a"}
WECHATPY_ENCRYPTED = (
    "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymz"
    "xh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIi"
    "OAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvc"
    "cTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0="
)
WECHATPY_REPLY = """<xml>
<MsgType><![CDATA[text]]></MsgType>
<Content><![CDATA[test]]></Content>
<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>
<ToUserName><![CDATA[messense]]></ToUserName>
<AgentID>1</AgentID>
<CreateTime>1411525903</CreateTime>
</xml>"""
WECHATPY_REPLY_ENCRYPTED = (
    "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtOb"
    "vesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8"
    "NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O"
    "5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3"
)
# Tencent's sample for the Official Account message crypto (WXBizMsgCrypt, Sample.py).
TENCENT = {"token": "spamtest", "key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "appid": "wx2c2769f8efd9abc2"}
TENCENT_ENCRYPTED = (
    "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9"
    "FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3y"
    "t+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v"
    "6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE="
)
TENCENT_REQUEST = {"msg_signature": "5d197aaffba7e9b25a30732f161a50dee96bd5fa", "timestamp": "1409735669",
                   "nonce": "1320562132"}


def test_wechatpy_url_signature_vector():
    check_signature("test", "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff", "1410685589", "test")
    with pytest.raises(InvalidSignatureException):
        check_signature("test", "f21891de399b4e33a1a93c9a7b8a8fffb5a443fe", "1410685589", "test")


def test_wechatpy_decrypt_vector():
    crypto = WeChatCrypto(WECHATPY["token"], WECHATPY["key"], WECHATPY["appid"])
    xml = (f"<xml><ToUserName><![CDATA[wx49f0ab532d5d035a]]></ToUserName>"
           f"<Encrypt><![CDATA[{WECHATPY_ENCRYPTED}]]></Encrypt></xml>")
    message = xmltodict.parse(crypto.decrypt_message(xml, "74d92dfeb87ba7c714f89d98870ae5eb62dff26d",
                                                     "1411525903", "461056294"))["xml"]
    assert (message["Content"], message["FromUserName"]) == ("test", "messense")


def test_wechatpy_encrypt_vector(monkeypatch):
    monkeypatch.setattr(wechatpy_crypto.PrpCrypto, "get_random_string", lambda self: "1234567890123456")
    crypto = WeChatCrypto(WECHATPY["token"], WECHATPY["key"], WECHATPY["appid"])
    encrypted = xmltodict.parse(crypto.encrypt_message(WECHATPY_REPLY, "461056294", "1411525903"))["xml"]
    assert encrypted["Encrypt"] == WECHATPY_REPLY_ENCRYPTED
    assert encrypted["MsgSignature"] == "407518b7649e86ef23978113f92d27afa9296533"


def test_tencent_sample_decrypts():
    crypto = WeChatCrypto(TENCENT["token"], TENCENT["key"], TENCENT["appid"])
    plain = crypto.decrypt_message({"Encrypt": TENCENT_ENCRYPTED}, TENCENT_REQUEST["msg_signature"],
                                   TENCENT_REQUEST["timestamp"], TENCENT_REQUEST["nonce"])
    message = xmltodict.parse(plain)["xml"]
    assert (message["Content"], message["MsgId"]) == ("abcdteT", "6054768590064713728")


def request_for(sim: WeChatSimulator, xml: str, timestamp: str, nonce: str):
    url, body = sim.envelope(xml, timestamp, nonce)
    return SimpleNamespace(args=dict(parse_qsl(urlsplit(url).query)), body=body)


@pytest.mark.parametrize("vector, encrypted, msg_signature", [
    (TENCENT, TENCENT_ENCRYPTED, TENCENT_REQUEST["msg_signature"]),
    (WECHATPY, WECHATPY_ENCRYPTED, "74d92dfeb87ba7c714f89d98870ae5eb62dff26d"),
])
def test_the_channel_reads_the_published_ciphertexts(monkeypatch, vector, encrypted, msg_signature):
    channel = WeChatInput(vector["token"], vector["appid"], vector["key"])
    timestamp, nonce = (("1409735669", "1320562132") if vector is TENCENT else ("1411525903", "461056294"))
    monkeypatch.setattr("lakala_server.wechat.envelope.time.time", lambda: int(timestamp) + 1)
    sim = WeChatSimulator("http://unused", vector["token"], vector["appid"], vector["key"], mode="plain")
    url_signed = request_for(sim, "<xml/>", timestamp, nonce)
    request = SimpleNamespace(
        args={**url_signed.args, "encrypt_type": "aes", "msg_signature": msg_signature},
        body=f"<xml><ToUserName><![CDATA[x]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>".encode(),
    )
    inbound = channel.verify_and_parse(request)
    assert inbound.encrypted and inbound.msg_type == "text"
    assert inbound.message.content in ("abcdteT", "test")
    wrong_app = WeChatInput(vector["token"], "wx0000000000000000", vector["key"])
    with pytest.raises(Rejected) as rejected:
        wrong_app.verify_and_parse(request)
    assert rejected.value.status == 403


def test_the_simulator_round_trips_through_the_channel():
    channel = WeChatInput(SETTINGS["WECHAT_TOKEN"], SETTINGS["WECHAT_APPID"], SETTINGS["WECHAT_ENCODING_AES_KEY"],
                          message_mode="compatible")
    for mode in ("plain", "compat", "safe"):
        sim = WeChatSimulator("http://unused", SETTINGS["WECHAT_TOKEN"], SETTINGS["WECHAT_APPID"],
                              SETTINGS["WECHAT_ENCODING_AES_KEY"], mode=mode)
        request = request_for(sim, sim.text("oUser_1", "押金能退吗]]>"), str(int(time.time())), f"42{mode}")
        inbound = channel.verify_and_parse(request)
        assert (inbound.openid, inbound.message.content, inbound.encrypted) == (
            "oUser_1", "押金能退吗]]>", mode != "plain")


# --- configuration ---------------------------------------------------------------------------

GOOD = {"token": SETTINGS["WECHAT_TOKEN"], "appid": SETTINGS["WECHAT_APPID"],
        "encoding_aes_key": SETTINGS["WECHAT_ENCODING_AES_KEY"], "appsecret": SETTINGS["WECHAT_APPSECRET"]}


@pytest.mark.parametrize("key, value", [
    ("token", ""), ("token", "ab"), ("token", "has space"),
    ("appid", ""), ("appid", "wx123"), ("appid", "ab5c2f6d7e8a9b0c1d"),
    ("encoding_aes_key", ""), ("encoding_aes_key", SETTINGS["WECHAT_ENCODING_AES_KEY"][:42]),
    ("encoding_aes_key", SETTINGS["WECHAT_ENCODING_AES_KEY"] + "H"),
    ("encoding_aes_key", SETTINGS["WECHAT_ENCODING_AES_KEY"][:42] + "+"),
    ("appsecret", "short"),
])
def test_refuses_to_start_with_a_missing_or_malformed_secret(key, value):
    with pytest.raises(InvalidConfigException) as error:
        WeChatInput.from_credentials({**GOOD, key: value})
    for secret in GOOD.values():
        assert secret not in str(error.value)
    if value:
        assert value not in str(error.value)


def test_refuses_to_start_without_credentials():
    with pytest.raises(RasaException):
        WeChatInput.from_credentials(None)


def test_appsecret_is_optional():
    assert WeChatInput.from_credentials({**GOOD, "appsecret": ""}).api is None
    assert WeChatInput.from_credentials(GOOD).api is not None


def test_rasa_builds_the_channel_from_credentials_wechat_yml(monkeypatch):
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    channels = create_http_input_channels(None, str(ROOT / "credentials.wechat.yml"))
    assert "wechat" in [channel.name() for channel in channels]
    monkeypatch.setenv("WECHAT_ENCODING_AES_KEY", "tooshort")
    with pytest.raises(InvalidConfigException):
        create_http_input_channels(None, str(ROOT / "credentials.wechat.yml"))


def test_credentials_wechat_yml_keeps_every_channel_of_credentials_yml():
    plain = yaml.safe_load((ROOT / "credentials.yml").read_text(encoding="utf-8"))
    wechat = yaml.safe_load((ROOT / "credentials.wechat.yml").read_text(encoding="utf-8"))
    assert {k: v for k, v in wechat.items() if k != "lakala_server.wechat.WeChatInput"} == plain
    assert wechat["lakala_server.wechat.WeChatInput"] == {
        "token": "${WECHAT_TOKEN}", "appid": "${WECHAT_APPID}",
        "encoding_aes_key": "${WECHAT_ENCODING_AES_KEY}", "appsecret": "${WECHAT_APPSECRET}",
    }


# --- options ---------------------------------------------------------------------------------

def test_buttons_become_numbered_options_across_the_turn():
    text, options = render([
        {"text": "第一条", "buttons": [{"title": "查询终端状态", "payload": "/check_terminal_status"}]},
        {"text": "第二条"},
        {"text": "第三条", "buttons": [{"title": "押金能退吗", "payload": "押金能退吗"},
                                     {"title": "链接", "url": "https://example.com"}]},
    ], "回复 {number} {title}")
    assert text == "第一条\n回复 1 查询终端状态\n\n第二条\n\n第三条\n回复 2 押金能退吗"
    assert options == [Option(1, "查询终端状态", "/check_terminal_status"), Option(2, "押金能退吗", "押金能退吗")]


@pytest.mark.parametrize("answer, payload", [
    ("1", "/check_terminal_status"), (" 2 ", "押金能退吗"), ("２", "押金能退吗"), ("1。", "/check_terminal_status"),
    ("押金能退吗", "押金能退吗"), ("查询终端状态！", "/check_terminal_status"),
    ("3", None), ("0", None), ("12", None), ("押金", None), ("30091254", None),
])
def test_an_answer_picks_an_option_by_number_or_text(answer, payload):
    options = [Option(1, "查询终端状态", "/check_terminal_status"), Option(2, "押金能退吗", "押金能退吗")]
    picked = resolve_option(answer, options)
    assert (picked.payload if picked else None) == payload


# --- customer-service API ---------------------------------------------------------------------

def test_split_text_keeps_every_piece_within_wechats_limit():
    text = "\n".join(["押金" * 300, "短句", "注销" * 500, "x" * 10])
    pieces = split_text(text)
    assert all(len(piece.encode("utf-8")) <= 2048 for piece in pieces)
    assert "".join(pieces).replace("\n", "") == text.replace("\n", "")
    assert split_text("你好") == ["你好"]


async def closing(client: CustomerServiceClient, coroutine):
    try:
        return await coroutine
    finally:
        await client.close()


@pytest.fixture
def short_lived_api():
    api = FakeWeChatAPI(SETTINGS["WECHAT_APPID"], SETTINGS["WECHAT_APPSECRET"], expires_in=2).start()
    yield api
    api.stop()


def test_access_token_is_cached_and_refreshed_before_it_expires(short_lived_api):
    client = CustomerServiceClient(SETTINGS["WECHAT_APPID"], SETTINGS["WECHAT_APPSECRET"], short_lived_api.base_url)

    async def scenario():
        first = await client.access_token()
        assert await client.access_token() == first
        await client.send_text("oUser_cache", "你好")
        assert short_lived_api.token_requests == 1
        # WeChat's token lives 2 s here; the client renews it a tenth of that early.
        await asyncio.sleep(1.85)
        second = await client.access_token()
        await client.close()
        return first, second

    first, second = asyncio.run(scenario())
    assert first != second and short_lived_api.token_requests == 2
    assert short_lived_api.rejected == []


@pytest.mark.parametrize("errcode", [40001, 40014, 42001])
def test_a_rejected_token_is_fetched_again_and_the_message_still_sent(fake_api, errcode):
    client = CustomerServiceClient(SETTINGS["WECHAT_APPID"], SETTINGS["WECHAT_APPSECRET"], fake_api.base_url)
    openid = f"oUser_token_{errcode}"

    async def scenario():
        await client.send_text(openid, "第一条")
        before = fake_api.token_requests
        if errcode == 42001:
            fake_api.expire_tokens()
        else:
            fake_api.fail_next_send(errcode)
        await client.send_text(openid, "第二条")
        await client.close()
        return before

    before = asyncio.run(scenario())
    assert fake_api.messages_to(openid) == ["第一条", "第二条"]
    assert fake_api.token_requests == before + 1


def test_long_answers_are_split_to_fit(fake_api):
    client = CustomerServiceClient(SETTINGS["WECHAT_APPID"], SETTINGS["WECHAT_APPSECRET"], fake_api.base_url)
    text = "\n".join(f"第{i}行：" + "押金可以退" * 40 for i in range(12))
    assert asyncio.run(closing(client, client.send_text("oUser_long", text))) > 1
    sent = fake_api.messages_to("oUser_long")
    assert len(sent) > 1 and "\n".join(sent) == text
    assert 45002 not in fake_api.rejected


def test_wrong_appsecret_is_an_error_without_the_secret(fake_api):
    client = CustomerServiceClient(SETTINGS["WECHAT_APPID"], "f" * 32, fake_api.base_url)
    with pytest.raises(WeChatAPIError) as error:
        asyncio.run(closing(client, client.send_text("oUser_x", "你好")))
    assert error.value.errcode == 40125 and "f" * 32 not in str(error.value)
