"""WeChat Official Account (公众号) channel at `/webhooks/wechat/webhook`: the Rasa InputChannel.

WeChat POSTs each user message as XML (plaintext, compatible or safe mode) and waits 5 seconds
for the passive reply; without an answer it drops the connection and retries, 3 times in all.
The channel opens each message once (envelope.py), runs it through the bot once however often
WeChat delivers it, and answers each delivery as delivery.py decides: within the window when it
can, otherwise on WeChat's retry or through the customer-service message API. Buttons become
numbered options the user answers with a number or the option text (render.py).
"""
import asyncio
import logging
import re
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple

from rasa.core.channels.channel import InputChannel, UserMessage
from rasa.shared.exceptions import InvalidConfigException
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from lakala_server import config, fallback
from lakala_server.channels import guard_server
from lakala_server.wechat.api import CustomerServiceClient
from lakala_server.wechat.delivery import WECHAT_TIMEOUT_SECONDS, Deliveries, Delivery, Outbox
from lakala_server.wechat.envelope import DEFAULT_MESSAGE_MODE, MESSAGE_MODES, Envelope, Inbound, Rejected
from lakala_server.wechat.expiring import Expiring
from lakala_server.wechat.render import WeChatOutput, load_texts, render, resolve_option

logger = logging.getLogger(__name__)

Handler = Callable[[UserMessage], Awaitable[Any]]

# Answer this long after a request arrived at the latest, leaving WeChat's 5 s some slack.
DEFAULT_REPLY_DEADLINE_SECONDS = 4.0
ACK = "success"

TOKEN_RE = re.compile(r"[A-Za-z0-9]{3,32}")
APPID_RE = re.compile(r"wx[0-9A-Za-z]{16}")
AES_KEY_RE = re.compile(r"[A-Za-z0-9]{43}")
APPSECRET_RE = re.compile(r"[0-9A-Za-z]{32}")

WECHAT_PREFIX = "wechat:"
WELCOME_PAYLOAD = "/greet"
# Rasa's built-in restart intent: ends the conversation (action_restart) without a reply.
RESET_PAYLOAD = "/restart"
GREETING_EVENTS = {"subscribe", "subscribe_scan"}


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
                credentials.get("message_mode") or config.current().wechat_message_mode
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
        self.envelope = Envelope(token, appid, encoding_aes_key, message_mode)
        self.api = CustomerServiceClient(appid, appsecret, api_base) if appsecret else None
        self.reply_deadline = reply_deadline_seconds
        self.texts = load_texts()
        self.outbox = Outbox(self.api, self.texts.options_ttl_seconds)
        self._deliveries = Deliveries()
        self._options = Expiring(self.texts.options_ttl_seconds)

    def verify_and_parse(self, request: Request) -> Inbound:
        """The request's message, if it is WeChat's; raises Rejected otherwise."""
        return self.envelope.verify_and_parse(request)

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
                self.outbox.forget(inbound.openid)
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

    def _start(self, inbound: Inbound, safe: Handler, raw: Handler) -> Delivery:
        """The Delivery of a message seen for the first time, its processing started."""
        kind, text = self._user_message(inbound)
        delivery = Delivery(inbound.openid, self.outbox, self.reply_deadline, self.texts.still_working)
        delivery.start(self._process(inbound, kind, text, safe, raw))
        return delivery

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
                self.envelope.verify_signature(request.args)
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
            delivery = self._deliveries.once(inbound.key, lambda: self._start(inbound, safe, on_new_message))
            reply = await delivery.answer(arrived)
            if not reply:
                return response.text(ACK)
            xml = self.envelope.reply(self.outbox.passive(inbound.openid, reply), inbound)
            return response.text(xml, content_type="application/xml; charset=utf-8")

        guard_server(wechat_webhook)

        @wechat_webhook.listener("after_server_stop")
        async def close(*_: Any) -> None:
            await self.outbox.close()

        return wechat_webhook
