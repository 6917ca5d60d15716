"""Chat with the bot through its WeChat channel from a terminal, without a WeChat account.

The simulator plays WeChat's server: it builds the XML WeChat sends, signs it with the Token,
encrypts it with the EncodingAESKey (safe or compatible mode, via wechatpy), POSTs it to the
channel, waits 5 seconds and retries like WeChat does, and decrypts and prints the reply. With
--api-port it also runs a stand-in for WeChat's API (access_token and customer-service message
endpoints, same JSON) and prints the answers the channel sends there.

    WECHAT_TOKEN=... WECHAT_APPID=... WECHAT_ENCODING_AES_KEY=... python -m lakala_server.wechat.simulator
    (or `make wechat-demo`, which starts the bot with demo settings and runs this)

Lines you type are text messages; lines starting with ":" are other things a user can do
(":help" lists them).
"""
import argparse
import asyncio
import json
import os
import random
import re
import secrets
import socket
import string
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import defusedxml.ElementTree as safe_xml
from aiohttp import web
from wechatpy.crypto import WeChatCrypto
from wechatpy.utils import WeChatSigner

WECHAT_TIMEOUT_SECONDS = 5.0
WECHAT_DELIVERIES = 3
DEFAULT_URL = "http://localhost:5005/webhooks/wechat/webhook"
DEFAULT_ACCOUNT = "gh_0123456789ab"
TEXT_LIMIT_BYTES = 2048


def cdata(value: Any) -> str:
    return "<![CDATA[" + str(value).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def sender_of(xml: str) -> str:
    # A regular expression, not a parser: the simulator also sends XML no parser should accept.
    found = re.search(r"<FromUserName>(?:<!\[CDATA\[)?(.*?)(?:\]\]>)?</FromUserName>", xml)
    return found.group(1) if found else ""


def sign(*parts: str) -> str:
    signer = WeChatSigner()
    signer.add_data(*parts)
    return signer.signature


def demo_settings() -> Dict[str, str]:
    """Random, well-formed settings for a local demo (never a real account's)."""
    alphanumeric = string.ascii_letters + string.digits
    return {
        "WECHAT_TOKEN": "".join(secrets.choice(alphanumeric) for _ in range(32)),
        "WECHAT_APPID": "wx" + secrets.token_hex(8),
        "WECHAT_ENCODING_AES_KEY": "".join(secrets.choice(alphanumeric) for _ in range(43)),
        "WECHAT_APPSECRET": secrets.token_hex(16),
    }


@dataclass
class Attempt:
    status: Optional[int]
    seconds: float
    body: bytes = b""

    @property
    def timed_out(self) -> bool:
        return self.status is None


@dataclass
class Outcome:
    """What WeChat saw for one message: each delivery attempt and the reply it got."""

    attempts: List[Attempt] = field(default_factory=list)
    reply: Optional[str] = None
    reply_xml: Optional[Dict[str, str]] = None

    @property
    def status(self) -> Optional[int]:
        return self.attempts[-1].status if self.attempts else None

    @property
    def acknowledged(self) -> bool:
        """Answered in time with "success" (or nothing): WeChat shows nothing and stops."""
        return self.status == 200 and self.reply_xml is None

    @property
    def transferred(self) -> bool:
        """Answered with transfer_customer_service: WeChat hands the message to the account's
        customer-service agents (客服)."""
        return bool(self.reply_xml) and self.reply_xml.get("MsgType") == "transfer_customer_service"


class WeChatSimulator:
    """WeChat's side of the callback protocol for one Official Account."""

    def __init__(
        self,
        url: str,
        token: str,
        appid: str,
        encoding_aes_key: str,
        mode: str = "safe",
        account: str = DEFAULT_ACCOUNT,
        timeout: float = WECHAT_TIMEOUT_SECONDS,
    ) -> None:
        if mode not in ("plain", "compat", "safe"):
            raise ValueError("mode is plain, compat or safe")
        self.url, self.token, self.appid, self.mode = url, token, appid, mode
        self.account, self.timeout = account, timeout
        self.crypto = WeChatCrypto(token, encoding_aes_key, appid)
        self._msg_ids = random.Random()

    # --- the messages WeChat sends ---------------------------------------------------------

    def _xml(self, openid: str, msg_type: str, fields: Dict[str, Any], create_time: Optional[int] = None) -> str:
        parts = [
            f"<ToUserName>{cdata(self.account)}</ToUserName>",
            f"<FromUserName>{cdata(openid)}</FromUserName>",
            f"<CreateTime>{create_time or int(time.time())}</CreateTime>",
            f"<MsgType>{cdata(msg_type)}</MsgType>",
        ]
        for name, value in fields.items():
            parts.append(f"<{name}>{value if isinstance(value, int) else cdata(value)}</{name}>")
        return "<xml>" + "".join(parts) + "</xml>"

    def new_msg_id(self) -> int:
        return self._msg_ids.randrange(10**18, 10**19)

    def text(self, openid: str, content: str, msg_id: Optional[int] = None) -> str:
        return self._xml(openid, "text", {"Content": content, "MsgId": msg_id or self.new_msg_id()})

    def voice(self, openid: str, recognition: Optional[str], msg_id: Optional[int] = None) -> str:
        fields: Dict[str, Any] = {"MediaId": secrets.token_urlsafe(24), "Format": "amr"}
        if recognition is not None:
            fields["Recognition"] = recognition
        fields["MsgId"] = msg_id or self.new_msg_id()
        return self._xml(openid, "voice", fields)

    def image(self, openid: str) -> str:
        return self._xml(openid, "image", {
            "PicUrl": "http://mmbiz.qpic.cn/demo.jpg", "MediaId": secrets.token_urlsafe(24), "MsgId": self.new_msg_id(),
        })

    def location(self, openid: str) -> str:
        return self._xml(openid, "location", {
            "Location_X": "39.9", "Location_Y": "116.4", "Scale": 15, "Label": "北京市", "MsgId": self.new_msg_id(),
        })

    def event(self, openid: str, event: str, key: Optional[str] = None, create_time: Optional[int] = None) -> str:
        fields: Dict[str, Any] = {"Event": event}
        if key is not None:
            fields["EventKey"] = key
        return self._xml(openid, "event", fields, create_time)

    def kf_event(self, openid: str, event: str, account: str = "", to_account: str = "",
                 create_time: Optional[int] = None) -> str:
        """A customer-service session event: kf_create_session and kf_close_session carry the
        agent's KfAccount, kf_switch_session FromKfAccount and ToKfAccount."""
        fields: Dict[str, Any] = {"Event": event}
        if event == "kf_switch_session":
            fields.update(FromKfAccount=account, ToKfAccount=to_account)
        else:
            fields["KfAccount"] = account
        return self._xml(openid, "event", fields, create_time)

    # --- signing, encryption, delivery ------------------------------------------------------

    def envelope(self, xml: str, timestamp: Optional[str] = None, nonce: Optional[str] = None) -> tuple:
        """(url, body) of one POST, signed and encrypted as this account's mode requires."""
        timestamp = timestamp or str(int(time.time()))
        nonce = nonce or str(random.randrange(10**8, 10**10))
        openid = sender_of(xml)
        query = {"signature": sign(self.token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce,
                 "openid": openid}
        if self.mode == "plain":
            return f"{self.url}?{urllib.parse.urlencode(query)}", xml.encode("utf-8")
        # wechatpy's encrypt_message signs the ciphertext the way WeChat signs msg_signature.
        encrypted = safe_xml.fromstring(self.crypto.encrypt_message(xml, nonce, timestamp))
        ciphertext, msg_signature = encrypted.findtext("Encrypt"), encrypted.findtext("MsgSignature")
        query.update(encrypt_type="aes", msg_signature=msg_signature)
        if self.mode == "safe":
            body = f"<xml><ToUserName>{cdata(self.account)}</ToUserName><Encrypt>{cdata(ciphertext)}</Encrypt></xml>"
        else:
            body = xml[: -len("</xml>")] + f"<Encrypt>{cdata(ciphertext)}</Encrypt></xml>"
        return f"{self.url}?{urllib.parse.urlencode(query)}", body.encode("utf-8")

    def post(self, url: str, body: bytes, timeout: Optional[float] = None) -> Attempt:
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "text/xml"})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as answer:
                return Attempt(answer.status, time.monotonic() - started, answer.read())
        except urllib.error.HTTPError as error:
            return Attempt(error.code, time.monotonic() - started, error.read())
        except TimeoutError:
            return Attempt(None, time.monotonic() - started)
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                return Attempt(None, time.monotonic() - started)
            raise

    def read_reply(self, body: bytes, openid: str) -> Optional[Dict[str, str]]:
        """The passive reply's fields, decrypted and checked like WeChat does; None for "success"."""
        if body.strip() in (b"", b"success"):
            return None
        root = safe_xml.fromstring(body, forbid_dtd=True)
        if root.findtext("Encrypt") is not None:
            plain = self.crypto.decrypt_message(
                body, root.findtext("MsgSignature"), root.findtext("TimeStamp"), root.findtext("Nonce")
            )
            root = safe_xml.fromstring(plain.encode("utf-8"), forbid_dtd=True)
        elif self.mode == "safe":
            raise ValueError("a plaintext reply in safe mode")
        reply = {child.tag: child.text or "" for child in root}
        if reply.get("ToUserName") != openid or reply.get("FromUserName") != self.account:
            raise ValueError("the reply is addressed to someone else")
        if len(reply.get("Content", "").encode("utf-8")) > TEXT_LIMIT_BYTES:
            raise ValueError("the reply is longer than WeChat accepts")
        return reply

    def deliver(self, xml: str, deliveries: int = WECHAT_DELIVERIES) -> Outcome:
        """Sends one message like WeChat: each try waits 5 s, then it tries again, 3 times in all."""
        openid = sender_of(xml)
        url, body = self.envelope(xml)
        outcome = Outcome()
        for _ in range(deliveries):
            attempt = self.post(url, body)
            outcome.attempts.append(attempt)
            if attempt.timed_out:
                continue
            if attempt.status == 200:
                outcome.reply_xml = self.read_reply(attempt.body, openid)
                outcome.reply = outcome.reply_xml.get("Content") if outcome.reply_xml else None
            break
        return outcome


# --- WeChat's API: access_token and customer-service messages ----------------------------------


@dataclass
class SentMessage:
    touser: str
    content: str
    at: float


class FakeWeChatAPI:
    """A local stand-in for api.weixin.qq.com: GET /cgi-bin/token and POST
    /cgi-bin/message/custom/send, answering with WeChat's JSON and errcodes. Runs in a thread."""

    def __init__(self, appid: str, appsecret: str, port: int = 0, expires_in: int = 7200,
                 on_message: Optional[Callable[[SentMessage], None]] = None, token_delay: float = 0.0) -> None:
        self.appid, self.appsecret, self.port, self.expires_in = appid, appsecret, port, expires_in
        self.on_message = on_message
        # Seconds each token request takes, as WeChat's does over the internet.
        self.token_delay = token_delay
        self.sent: List[SentMessage] = []
        self.token_requests = 0
        self.stalled_sends = 0
        self._stall_next: List[float] = []
        self.rejected: List[int] = []
        self._tokens: Dict[str, float] = {}
        self._fail_next: List[int] = []
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def messages_to(self, openid: str) -> List[str]:
        with self._lock:
            return [message.content for message in self.sent if message.touser == openid]

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (WeChat answers 42001 for them)."""
        with self._lock:
            self._tokens = {token: 0.0 for token in self._tokens}

    def fail_next_send(self, errcode: int) -> None:
        with self._lock:
            self._fail_next.append(errcode)

    def stall_next_send(self, seconds: float) -> None:
        """The next customer-service message hangs `seconds` before it is taken; if its sender
        has hung up by then (it died), the message never reaches the user."""
        with self._lock:
            self._stall_next.append(seconds)

    async def _token(self, request: web.Request) -> web.Response:
        query = request.query
        if self.token_delay:
            await asyncio.sleep(self.token_delay)
        with self._lock:
            self.token_requests += 1
            if query.get("grant_type") != "client_credential":
                return self._json({"errcode": 40002, "errmsg": "invalid grant_type"})
            if query.get("appid") != self.appid:
                return self._json({"errcode": 40013, "errmsg": "invalid appid"})
            if query.get("secret") != self.appsecret:
                return self._json({"errcode": 40125, "errmsg": "invalid appsecret"})
            token = secrets.token_urlsafe(48)
            self._tokens[token] = time.time() + self.expires_in
        return self._json({"access_token": token, "expires_in": self.expires_in})

    async def _send(self, request: web.Request) -> web.Response:
        token = request.query.get("access_token")
        raw = await request.read()
        with self._lock:
            stall = self._stall_next.pop(0) if self._stall_next else 0.0
            self.stalled_sends += 1 if stall else 0
        if stall:
            await asyncio.sleep(stall)
            if request.transport is None or request.transport.is_closing():
                return self._json({"errcode": -1, "errmsg": "the sender hung up"})
        with self._lock:
            if not token:
                return self._reject(41001, "access_token missing")
            if token not in self._tokens:
                return self._reject(40001, "invalid credential, access_token is invalid or not latest")
            if self._tokens[token] < time.time():
                return self._reject(42001, "access_token expired")
            if self._fail_next:
                return self._reject(self._fail_next.pop(0), "injected failure")
            try:
                payload = json.loads(raw.decode("utf-8"))
                touser, content = payload["touser"], payload["text"]["content"]
                assert payload["msgtype"] == "text"
            except (ValueError, KeyError, TypeError, AssertionError):
                return self._reject(47001, "data format error")
            if len(content.encode("utf-8")) > TEXT_LIMIT_BYTES:
                return self._reject(45002, "content size out of limit")
            message = SentMessage(touser, content, time.monotonic())
            self.sent.append(message)
        if self.on_message:
            self.on_message(message)
        return self._json({"errcode": 0, "errmsg": "ok"})

    def _reject(self, errcode: int, errmsg: str) -> web.Response:
        self.rejected.append(errcode)
        return self._json({"errcode": errcode, "errmsg": errmsg})

    @staticmethod
    def _json(payload: Dict[str, Any]) -> web.Response:
        return web.Response(body=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
                            content_type="application/json", charset="utf-8")

    def start(self) -> "FakeWeChatAPI":
        if not self.port:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="fake-wechat-api", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake WeChat API did not start")
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_get("/cgi-bin/token", self._token)
        app.router.add_post("/cgi-bin/message/custom/send", self._send)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


# --- the terminal ------------------------------------------------------------------------------

HELP = """Type a message and press Enter. Other things a WeChat user can do:
  :follow            follow the account (关注) - the bot welcomes you
  :unfollow          unfollow (取消关注) - ends your conversation
  :voice TEXT        a voice message that WeChat recognised as TEXT (":voice" alone: not recognised)
  :image             send a picture
  :location          send a location
  :menu KEY          tap a menu item whose key is KEY (a button payload, e.g. /check_terminal_status)
  :agent ACCOUNT     a customer-service agent takes the chat (kf_create_session), e.g. :agent kf2001@gh_demo
  :switch FROM TO    the agent passes the chat on (kf_switch_session)
  :close ACCOUNT     the agent ends the chat (kf_close_session); the bot answers again
  :quit              leave"""


def build(sim: WeChatSimulator, openid: str, line: str) -> Optional[str]:
    command, _, argument = line.partition(" ")
    if not line.startswith(":"):
        return sim.text(openid, line)
    if command == ":follow":
        return sim.event(openid, "subscribe", "")
    if command == ":unfollow":
        return sim.event(openid, "unsubscribe", "")
    if command == ":voice":
        return sim.voice(openid, argument or None)
    if command == ":image":
        return sim.image(openid)
    if command == ":location":
        return sim.location(openid)
    if command == ":menu" and argument:
        return sim.event(openid, "CLICK", argument)
    accounts = argument.split()
    if command == ":agent" and len(accounts) == 1:
        return sim.kf_event(openid, "kf_create_session", accounts[0])
    if command == ":switch" and len(accounts) == 2:
        return sim.kf_event(openid, "kf_switch_session", accounts[0], accounts[1])
    if command == ":close" and len(accounts) == 1:
        return sim.kf_event(openid, "kf_close_session", accounts[0])
    return None


def show(outcome: Outcome) -> str:
    tries = ", ".join("timed out" if a.timed_out else f"HTTP {a.status} in {a.seconds:.2f} s" for a in outcome.attempts)
    if outcome.transferred:
        return f"    [转给客服] the message went to the account's customer-service agents\n    ({tries})"
    if outcome.reply is not None:
        return f"{outcome.reply}\n    ({tries})"
    if outcome.acknowledged:
        return f"    (acknowledged: {tries}; an answer may follow as a customer-service message)"
    body = outcome.attempts[-1].body.decode("utf-8", "replace") if outcome.attempts else ""
    return f"    (no reply: {tries}) {body}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("WECHAT_WEBHOOK_URL", DEFAULT_URL),
                        help=f"the channel's webhook (default {DEFAULT_URL})")
    parser.add_argument("--mode", choices=["safe", "compat", "plain"], default="safe",
                        help="message encryption mode of the account (default: safe)")
    parser.add_argument("--openid", default="o" + secrets.token_urlsafe(20)[:27], help="the user's OpenID")
    parser.add_argument("--api-port", type=int, help="run the stand-in WeChat API on this port")
    parser.add_argument("--say", action="append", help="send this line instead of reading the terminal")
    args = parser.parse_args(argv)
    missing = [n for n in ("WECHAT_TOKEN", "WECHAT_APPID", "WECHAT_ENCODING_AES_KEY") if not os.environ.get(n)]
    if missing:
        print(f"Set {', '.join(missing)} to the values the bot runs with (see README).", file=sys.stderr)
        return 2
    sim = WeChatSimulator(args.url, os.environ["WECHAT_TOKEN"], os.environ["WECHAT_APPID"],
                          os.environ["WECHAT_ENCODING_AES_KEY"], mode=args.mode)
    api = None
    if args.api_port:
        def print_message(message: SentMessage) -> None:
            print(f"\n[客服消息] {message.content}\n> ", end="", flush=True)

        api = FakeWeChatAPI(os.environ["WECHAT_APPID"], os.environ.get("WECHAT_APPSECRET", ""),
                            port=args.api_port, on_message=print_message).start()
    lines = iter(args.say) if args.say else None
    if lines is None:
        print(f"WeChat simulator: {args.mode} mode, OpenID {args.openid}, posting to {args.url}\n{HELP}")
    try:
        while True:
            if lines is not None:
                line = next(lines, None)
                if line is None:
                    break
                print(f"> {line}")
            else:
                try:
                    line = input("> ").strip()
                except EOFError:
                    break
            if not line:
                continue
            if line in (":quit", ":q"):
                break
            if line == ":help":
                print(HELP)
                continue
            xml = build(sim, args.openid, line)
            if xml is None:
                print("Unknown command; :help lists them.")
                continue
            try:
                print(show(sim.deliver(xml)))
            except OSError as error:
                print(f"    (cannot reach {args.url}: {error})")
    except KeyboardInterrupt:
        print()
    finally:
        if api is not None:
            time.sleep(0.2)
            api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
