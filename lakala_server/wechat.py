"""WeChat Official Account (公众号) channel at `/webhooks/wechat/webhook`.

WeChat POSTs each user message as XML (plaintext, compatible or safe mode) and waits 5 seconds
for the passive reply; without an answer it drops the connection and retries, 3 times in all.
The channel verifies, parses and dispatches each message once, answers within the window when
it can, and otherwise delivers the answer on WeChat's retry or through the customer-service
message API. Buttons become numbered options the user answers with a number or the option text.
"""
import asyncio
import hashlib
import hmac
import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as safe_xml
import yaml
from rasa.core.channels.channel import InputChannel, OutputChannel, UserMessage
from rasa.shared.exceptions import InvalidConfigException
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse
from wechatpy import create_reply, parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.messages import BaseMessage
from wechatpy.utils import WeChatSigner

from lakala_server import fallback
from lakala_server.channels import guard_server
from lakala_server.typed_buttons import normalized
from lakala_server.wechat_api import CustomerServiceClient, WeChatAPIError, split_text

logger = logging.getLogger(__name__)

Handler = Callable[[UserMessage], Awaitable[Any]]

WECHAT_TIMEOUT_SECONDS = 5.0
# Answer this long after a request arrived at the latest, leaving WeChat's 5 s some slack.
DEFAULT_REPLY_DEADLINE_SECONDS = 4.0
# WeChat sends a message at most 3 times; the third delivery is the last chance to answer it.
LAST_DELIVERY = 3
MAX_CLOCK_SKEW_SECONDS = 300
# Longer than the accepted clock skew, so a replayed request is caught by one or the other.
DEDUPE_TTL_SECONDS = MAX_CLOCK_SKEW_SECONDS + 60
MAX_BODY_BYTES = 64 * 1024
# The account's message encryption (公众号 console: 明文 / 兼容 / 安全模式). In safe mode a
# request that is not encrypted and signed is refused, so nobody can downgrade to plaintext.
MESSAGE_MODES = ("safe", "compatible", "plaintext")
DEFAULT_MESSAGE_MODE = "safe"
MAX_TRACKED = 10_000
ACK = "success"

TOKEN_RE = re.compile(r"[A-Za-z0-9]{3,32}")
APPID_RE = re.compile(r"wx[0-9A-Za-z]{16}")
AES_KEY_RE = re.compile(r"[A-Za-z0-9]{43}")
APPSECRET_RE = re.compile(r"[0-9A-Za-z]{32}")
OPENID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
OPTION_NUMBER_RE = re.compile(r"[0-9]{1,3}")

WECHAT_PREFIX = "wechat:"
OPTION_RESPONSE = "utter_wechat_option"
UNSUPPORTED_RESPONSE = "utter_wechat_unsupported"
VOICE_UNRECOGNIZED_RESPONSE = "utter_wechat_voice_unrecognized"
STILL_WORKING_RESPONSE = "utter_wechat_still_working"
WELCOME_PAYLOAD = "/greet"
# Rasa's built-in restart intent: ends the conversation (action_restart) without a reply.
RESET_PAYLOAD = "/restart"
GREETING_EVENTS = {"subscribe", "subscribe_scan"}


@dataclass(frozen=True)
class ChannelTexts:
    """What the channel itself says, taken from domain.yml."""

    option_line: str
    unsupported: str
    voice_unrecognized: str
    still_working: str
    options_ttl_seconds: float


def load_texts(path: Optional[Path] = None) -> ChannelTexts:
    path = path or fallback.DOMAIN_FILE
    try:
        domain = yaml.safe_load(path.read_text(encoding="utf-8"))
        responses = domain["responses"]

        def text(name: str) -> str:
            return str(responses[name][0]["text"])

        minutes = float((domain.get("session_config") or {}).get("session_expiration_time") or 60)
        return ChannelTexts(
            option_line=str(responses[OPTION_RESPONSE][0]["custom"]["line"]),
            unsupported=text(UNSUPPORTED_RESPONSE),
            voice_unrecognized=text(VOICE_UNRECOGNIZED_RESPONSE),
            still_working=text(STILL_WORKING_RESPONSE),
            options_ttl_seconds=minutes * 60,
        )
    except (OSError, KeyError, IndexError, TypeError, ValueError, yaml.YAMLError) as error:
        raise InvalidConfigException(
            f"The WeChat channel needs the responses {OPTION_RESPONSE}, {UNSUPPORTED_RESPONSE}, "
            f"{VOICE_UNRECOGNIZED_RESPONSE} and {STILL_WORKING_RESPONSE} in {path} "
            f"({type(error).__name__})."
        ) from None


@dataclass(frozen=True)
class Option:
    number: int
    title: str
    payload: str


def render(messages: List[Dict[str, Any]], option_line: str) -> Tuple[str, List[Option]]:
    """The bot's messages of one turn as one text, buttons numbered across the turn."""
    blocks: List[str] = []
    options: List[Option] = []
    for message in messages:
        lines = [str(message["text"]).strip()] if message.get("text") else []
        for button in message.get("buttons") or []:
            title = str(button.get("title") or "").strip()
            payload = str(button.get("payload") or "").strip()
            if not title or not payload:
                continue
            option = Option(len(options) + 1, title, payload)
            options.append(option)
            lines.append(option_line.replace("{number}", str(option.number)).replace("{title}", title))
        if lines:
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks), options


def resolve_option(text: str, options: List[Option]) -> Optional[Option]:
    """The option the user picked by its number or its text, if any."""
    answer = normalized(text)
    if OPTION_NUMBER_RE.fullmatch(answer):
        number = int(answer)
        return options[number - 1] if 1 <= number <= len(options) else None
    return next((option for option in options if normalized(option.title) == answer), None)


class WeChatOutput(OutputChannel):
    """Collects one turn of bot messages; the input channel sends them as one WeChat reply."""

    @classmethod
    def name(cls) -> str:
        return "wechat"

    def __init__(self) -> None:
        self.messages: List[Dict[str, Any]] = []

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        self.messages.append({"text": text})

    async def send_text_with_buttons(
        self, recipient_id: str, text: str, buttons: List[Dict[str, Any]], **kwargs: Any
    ) -> None:
        self.messages.append({"text": text, "buttons": buttons})

    async def send_image_url(self, recipient_id: str, image: str, **kwargs: Any) -> None:
        self.messages.append({"text": image})

    async def send_attachment(self, recipient_id: str, attachment: str, **kwargs: Any) -> None:
        self.messages.append({"text": str(attachment)})

    async def send_custom_json(self, recipient_id: str, json_message: Dict[str, Any], **kwargs: Any) -> None:
        logger.debug("a custom payload has no WeChat form; not sent")


class Rejected(Exception):
    """A request that must not reach the bot."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Inbound:
    """A verified message, and what to do with it."""

    openid: str
    message: BaseMessage
    encrypted: bool
    nonce: str
    key: str
    msg_type: str
    event: str


@dataclass
class Delivery:
    """One WeChat message, however many times WeChat delivers it."""

    openid: str
    task: "asyncio.Task[Optional[str]]"
    created: float = field(default_factory=time.monotonic)
    deliveries: int = 0
    # The newest request still waiting within its deadline: WeChat listens only to the newest.
    waiter: "Optional[asyncio.Future[Optional[str]]]" = None
    # A request was answered without the reply, so the reply must go another way.
    acknowledged: bool = False
    delivered: bool = False


class _Expiring:
    """A small per-user store whose entries expire, bounded in size."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._items: OrderedDict[str, Tuple[float, Any]] = OrderedDict()

    def put(self, key: str, value: Any) -> None:
        self._items.pop(key, None)
        self._items[key] = (time.monotonic() + self.ttl, value)
        while len(self._items) > MAX_TRACKED:
            self._items.popitem(last=False)

    def get(self, key: str) -> Any:
        expires, value = self._items.get(key, (0.0, None))
        return value if expires > time.monotonic() else None

    def pop(self, key: str) -> Any:
        expires, value = self._items.pop(key, (0.0, None))
        return value if expires > time.monotonic() else None


def _sign(*parts: str) -> str:
    signer = WeChatSigner()
    signer.add_data(*parts)
    return signer.signature


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def _parse_xml(data: bytes) -> Element:
    try:
        root = safe_xml.fromstring(data, forbid_dtd=True)
    except (defusedxml.DefusedXmlException, ParseError):
        raise Rejected(400, "malformed or unsafe XML") from None
    if root.tag != "xml":
        raise Rejected(400, "not a WeChat message")
    return root


def _cdata_safe(text: str) -> str:
    # wechatpy wraps the content in one CDATA section, which "]]>" would end early.
    return text.replace("]]>", "]]]]><![CDATA[>")


class WeChatInput(InputChannel):
    """WeChat Official Account input channel, configured from WECHAT_* environment variables."""

    @classmethod
    def name(cls) -> str:
        return "wechat"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[str, Any]]) -> InputChannel:
        if not credentials:
            cls.raise_missing_credentials_exception()
        return cls(
            token=str(credentials.get("token") or "").strip(),
            appid=str(credentials.get("appid") or "").strip(),
            encoding_aes_key=str(credentials.get("encoding_aes_key") or "").strip(),
            appsecret=str(credentials.get("appsecret") or "").strip(),
            api_base=credentials.get("api_base"),
            message_mode=str(
                credentials.get("message_mode") or os.environ.get("WECHAT_MESSAGE_MODE") or DEFAULT_MESSAGE_MODE
            ).strip().lower(),
        )

    def __init__(
        self,
        token: str,
        appid: str,
        encoding_aes_key: str,
        appsecret: str = "",
        api_base: Optional[str] = None,
        reply_deadline_seconds: float = DEFAULT_REPLY_DEADLINE_SECONDS,
        message_mode: str = DEFAULT_MESSAGE_MODE,
    ) -> None:
        problems = []
        if message_mode not in MESSAGE_MODES:
            problems.append(f"WECHAT_MESSAGE_MODE must be one of {', '.join(MESSAGE_MODES)}")
        if not TOKEN_RE.fullmatch(token):
            problems.append("WECHAT_TOKEN must be 3-32 letters or digits")
        if not APPID_RE.fullmatch(appid):
            problems.append("WECHAT_APPID must be 'wx' and 16 letters or digits")
        if not AES_KEY_RE.fullmatch(encoding_aes_key):
            problems.append("WECHAT_ENCODING_AES_KEY must be 43 letters or digits")
        if appsecret and not APPSECRET_RE.fullmatch(appsecret):
            problems.append("WECHAT_APPSECRET must be 32 letters or digits (or empty)")
        if not 0 < reply_deadline_seconds < WECHAT_TIMEOUT_SECONDS:
            problems.append(f"the reply deadline must be under {WECHAT_TIMEOUT_SECONDS} s")
        if problems:
            # The values are secrets: say what is wrong, never what they are.
            raise InvalidConfigException("The WeChat channel cannot start: " + "; ".join(problems) + ".")
        self.token = token
        self.appid = appid
        self.message_mode = message_mode
        # (timestamp, nonce) -> digest of the body, for as long as the timestamp is accepted.
        self._nonces = _Expiring(2 * MAX_CLOCK_SKEW_SECONDS)
        self.crypto = WeChatCrypto(token, encoding_aes_key, appid)
        self.api = CustomerServiceClient(appid, appsecret, api_base) if appsecret else None
        self.reply_deadline = reply_deadline_seconds
        self.texts = load_texts()
        self._deliveries: Dict[str, Delivery] = {}
        self._options = _Expiring(self.texts.options_ttl_seconds)
        self._carried_over = _Expiring(self.texts.options_ttl_seconds)
        self._background_tasks: Set[asyncio.Task] = set()
        self._last_prune = time.monotonic()

    # --- verify and parse -------------------------------------------------------------------

    def _verify_signature(self, args: Any) -> Tuple[str, str]:
        signature, timestamp, nonce = (args.get(name) or "" for name in ("signature", "timestamp", "nonce"))
        if not (signature and timestamp and nonce):
            raise Rejected(400, "missing signature, timestamp or nonce")
        try:
            skew = abs(time.time() - int(timestamp))
        except ValueError:
            raise Rejected(400, "malformed timestamp") from None
        if skew > MAX_CLOCK_SKEW_SECONDS:
            raise Rejected(403, "timestamp outside the accepted window")
        if not _same(_sign(self.token, timestamp, nonce), signature):
            raise Rejected(403, "bad signature")
        return timestamp, nonce

    def _check_nonce(self, timestamp: str, nonce: str, body: bytes) -> None:
        """A signed (timestamp, nonce) may come again with the same body (WeChat's retries),
        never with another one: the plaintext body is not covered by the signature."""
        key = f"{timestamp}:{nonce}"
        digest = hashlib.sha256(body).digest()
        seen = self._nonces.get(key)
        if seen is not None and not hmac.compare_digest(seen, digest):
            raise Rejected(403, "timestamp and nonce reused with another body")
        if seen is None:
            self._nonces.put(key, digest)

    def verify_and_parse(self, request: Request) -> Inbound:
        """The request's message, if it is WeChat's; raises Rejected otherwise."""
        timestamp, nonce = self._verify_signature(request.args)
        body = request.body or b""
        if len(body) > MAX_BODY_BYTES:
            raise Rejected(413, "body too large")
        encrypt_type = request.args.get("encrypt_type") or "raw"
        if encrypt_type not in ("aes", "raw"):
            raise Rejected(400, "unknown encrypt_type")
        if self.message_mode == "safe" and encrypt_type != "aes":
            raise Rejected(403, "the account is in safe mode: unencrypted request refused")
        self._check_nonce(timestamp, nonce, body)
        envelope = _parse_xml(body)
        if encrypt_type == "aes":
            ciphertext = envelope.findtext("Encrypt") or ""
            msg_signature = request.args.get("msg_signature") or ""
            if not (ciphertext and msg_signature):
                raise Rejected(400, "encrypted message without Encrypt or msg_signature")
            if not _same(_sign(self.token, timestamp, nonce, ciphertext), msg_signature):
                raise Rejected(403, "bad msg_signature")
            try:
                plaintext = self.crypto.decrypt_message(
                    {"Encrypt": ciphertext}, msg_signature, timestamp, nonce
                ).encode("utf-8")
            except InvalidAppIdException:
                raise Rejected(403, "message encrypted for another AppID") from None
            except InvalidSignatureException:
                raise Rejected(403, "bad msg_signature") from None
            except Exception:
                raise Rejected(400, "undecryptable message") from None
            root = _parse_xml(plaintext)
        else:
            plaintext, root = body, envelope
        try:
            message = parse_message(plaintext)
        except Exception:
            raise Rejected(400, "unparseable message") from None
        openid = str(message.source or "")
        msg_type = (root.findtext("MsgType") or "").strip().lower()
        if not OPENID_RE.fullmatch(openid) or not msg_type:
            raise Rejected(400, "message without a valid FromUserName or MsgType")
        event = (root.findtext("Event") or "").strip().lower() if msg_type == "event" else ""
        msg_id = (root.findtext("MsgId") or "").strip()
        # WeChat's own advice: dedupe messages by MsgId and events by FromUserName + CreateTime
        # (the event name is added so two different events in one second stay apart).
        if msg_id:
            key = f"msg:{openid}:{msg_id}"
        else:
            key = f"event:{openid}:{(root.findtext('CreateTime') or '').strip()}:{event}"
        return Inbound(openid, message, encrypt_type == "aes", nonce, key, msg_type, event)

    # --- dispatch -----------------------------------------------------------------------------

    def _user_message(self, inbound: Inbound) -> Tuple[str, Optional[str]]:
        """(kind, text): kind is "bot" (text goes to Rasa), "reply" (the channel answers with
        text itself), "reset" (the conversation ends) or "ignore"."""
        message: Any = inbound.message
        if inbound.msg_type == "event":
            if inbound.event in GREETING_EVENTS:
                return "bot", WELCOME_PAYLOAD
            if inbound.event == "unsubscribe":
                return "reset", RESET_PAYLOAD
            if inbound.event == "click" and str(message.key or "").strip():
                # A menu item's key is a button payload, set by the operator in the menu.
                return "bot", str(message.key).strip()
            return "ignore", None
        if inbound.msg_type == "text":
            text = str(message.content or "")
        elif inbound.msg_type == "voice" and str(message.recognition or "").strip():
            text = str(message.recognition)
        elif inbound.msg_type == "voice":
            return "reply", self.texts.voice_unrecognized
        else:
            return "reply", self.texts.unsupported
        options = self._options.pop(inbound.openid) or []
        picked = resolve_option(text, options)
        if picked is not None:
            return "bot", picked.payload
        # Typed text is never read as an "/intent" payload: only offered options are.
        return "bot", text.strip().lstrip("/").strip()

    async def _process(
        self, inbound: Inbound, kind: str, text: Optional[str], safe: Handler, raw: Handler
    ) -> Optional[str]:
        """Runs one message through Rasa; returns the reply text, or None for no reply."""
        if kind != "bot" and kind != "reset":
            return text
        output = WeChatOutput()
        metadata = {"wechat": {"msg_type": inbound.msg_type, "event": inbound.event or None}}
        # Stored as `wechat:<openid>`: no other channel can address a WeChat conversation.
        sender = WECHAT_PREFIX + inbound.openid
        message = UserMessage(text, output, sender, input_channel=self.name(), metadata=metadata)
        try:
            if kind == "reset":
                self._options.pop(inbound.openid)
                self._carried_over.pop(inbound.openid)
                await raw(message)
                return None
            await safe(message)
            reply, options = render(output.messages, self.texts.option_line)
        except Exception:
            logger.exception("handling a WeChat message failed; answering with the failure response")
            return str(fallback.failure_message().get("text", "")) or None
        # The options offered in this turn replace whatever was offered before.
        if options:
            self._options.put(inbound.openid, options)
        else:
            self._options.pop(inbound.openid)
        return reply or None

    def _settle(self, delivery: Delivery) -> None:
        """Called when the answer is ready: hand it to whoever can still deliver it."""
        if delivery.delivered or delivery.task.cancelled():
            return
        reply = delivery.task.result()
        if delivery.waiter is not None and not delivery.waiter.done():
            delivery.delivered = True
            delivery.waiter.set_result(reply)
        elif not reply:
            delivery.delivered = True
        elif delivery.acknowledged:
            delivery.delivered = True
            self._spawn(self._deliver_later(delivery.openid, reply))
        else:
            # Nobody is listening now; WeChat's retry should come for it, else it is carried over.
            asyncio.get_running_loop().call_later(2 * WECHAT_TIMEOUT_SECONDS, self._give_up_waiting, delivery)

    def _give_up_waiting(self, delivery: Delivery) -> None:
        if not delivery.delivered:
            delivery.delivered = True
            reply = delivery.task.result()
            if reply:
                self._spawn(self._deliver_later(delivery.openid, reply))

    async def _deliver_later(self, openid: str, reply: str) -> None:
        """Sends an answer outside a passive reply: customer-service API, else with the next reply."""
        if self.api is not None:
            try:
                await self.api.send_text(openid, reply)
                return
            except WeChatAPIError as error:
                logger.error("customer-service message failed (errcode %s); keeping it for the next reply",
                             error.errcode)
        pending = self._carried_over.pop(openid) or []
        self._carried_over.put(openid, pending + [reply])

    async def _deliver_rest(self, openid: str, rest: str) -> None:
        # After the passive reply has had time to arrive, so the pieces are shown in order.
        await asyncio.sleep(1.0)
        await self._deliver_later(openid, rest)

    async def _answer(self, delivery: Delivery, arrived: float) -> Optional[str]:
        """The passive reply for this delivery of a message, or None to acknowledge with "success"."""
        loop = asyncio.get_running_loop()
        delivery.deliveries += 1
        attempt = delivery.deliveries
        if delivery.task.done():
            # The answer was ready before WeChat asked again and nobody has delivered it.
            if not delivery.delivered:
                delivery.delivered = True
                return delivery.task.result()
            return None
        if delivery.waiter is not None and not delivery.waiter.done():
            delivery.waiter.set_result(None)
        waiter: asyncio.Future[Optional[str]] = loop.create_future()
        delivery.waiter = waiter
        try:
            remaining = self.reply_deadline - (loop.time() - arrived)
            return await asyncio.wait_for(asyncio.shield(waiter), max(0.0, remaining))
        except asyncio.TimeoutError:
            pass
        finally:
            if delivery.waiter is waiter:
                delivery.waiter = None
        if self.api is not None:
            delivery.acknowledged = True
            return None
        if attempt >= LAST_DELIVERY:
            delivery.acknowledged = True
            return self.texts.still_working
        # No customer-service API: stay silent past WeChat's 5 s so that it retries; the retry
        # takes the answer. Answering "success" here would tell WeChat to give up.
        await asyncio.sleep(max(0.0, WECHAT_TIMEOUT_SECONDS + 1 - (loop.time() - arrived)))
        return None

    def _delivery(self, inbound: Inbound, safe: Handler, raw: Handler) -> Delivery:
        delivery = self._deliveries.get(inbound.key)
        if delivery is None:
            kind, text = self._user_message(inbound)
            task = asyncio.create_task(self._process(inbound, kind, text, safe, raw))
            delivery = Delivery(inbound.openid, task)
            self._deliveries[inbound.key] = delivery
            task.add_done_callback(lambda _: self._settle(delivery))
        return delivery

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        # Keep a reference so the task is not garbage-collected before it finishes.
        task = asyncio.ensure_future(coroutine)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < 10 and len(self._deliveries) < MAX_TRACKED:
            return
        self._last_prune = now
        for key, delivery in list(self._deliveries.items()):
            if delivery.task.done() and now - delivery.created > DEDUPE_TTL_SECONDS:
                del self._deliveries[key]

    def _passive_reply(self, text: str, inbound: Inbound) -> HTTPResponse:
        pending = self._carried_over.pop(inbound.openid) or []
        pieces = split_text("\n\n".join(pending + [text]))
        if len(pieces) > 1:
            self._spawn(self._deliver_rest(inbound.openid, "\n".join(pieces[1:])))
        xml = create_reply(_cdata_safe(pieces[0]), message=inbound.message).render()
        if inbound.encrypted:
            xml = self.crypto.encrypt_message(xml, inbound.nonce)
        return response.text(xml, content_type="application/xml; charset=utf-8")

    # --- routes -------------------------------------------------------------------------------

    def blueprint(self, on_new_message: Handler) -> Blueprint:
        safe = fallback.never_silent(on_new_message)
        wechat_webhook = Blueprint("wechat_webhook", __name__)

        @wechat_webhook.route("/", methods=["GET"])
        async def health(_: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        @wechat_webhook.route("/webhook", methods=["GET"])
        async def verify_url(request: Request) -> HTTPResponse:
            # WeChat's server configuration check: echo echostr for a valid signature only.
            try:
                self._verify_signature(request.args)
            except Rejected as rejected:
                logger.warning("WeChat URL check rejected: %s", rejected.reason)
                return response.text(rejected.reason, status=rejected.status)
            return response.text(request.args.get("echostr") or "")

        @wechat_webhook.route("/webhook", methods=["POST"])
        async def receive(request: Request) -> HTTPResponse:
            arrived = asyncio.get_running_loop().time()
            try:
                inbound = self.verify_and_parse(request)
            except Rejected as rejected:
                logger.warning("WeChat webhook rejected a request: %s", rejected.reason)
                return response.text(rejected.reason, status=rejected.status)
            self._prune()
            reply = await self._answer(self._delivery(inbound, safe, on_new_message), arrived)
            if not reply:
                return response.text(ACK)
            return self._passive_reply(reply, inbound)

        guard_server(wechat_webhook)

        @wechat_webhook.listener("after_server_stop")
        async def close(*_: Any) -> None:
            if self.api is not None:
                await self.api.close()

        return wechat_webhook

