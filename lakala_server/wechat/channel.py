"""WeChat Official Account (公众号) channel at `/webhooks/wechat/webhook`: the Rasa InputChannel.

WeChat POSTs each user message as XML (plaintext, compatible or safe mode) and waits 5 seconds
for the passive reply; without an answer it drops the connection and retries, 3 times in all.
The channel opens each message once (envelope.py), runs it through the bot once however often
WeChat delivers it, and answers each delivery as delivery.py decides: within the window when it
can, otherwise on WeChat's retry or through the customer-service message API. Buttons become
numbered options the user answers with a number or the option text (render.py).

With REDIS_URL the channel runs on several replicas (cluster.py): the dedupe, the options
offered, the carried-over answers, the access_token and the outbox of late answers live in
Redis, so any replica can receive any delivery of any message.
"""
import asyncio
import dataclasses
import logging
import re
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple

from rasa.core.channels.channel import InputChannel, UserMessage
from rasa.shared.exceptions import InvalidConfigException
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from lakala_server import config, fallback, handoff, shared
from lakala_server.channels import guard_server
from lakala_server.wechat.api import CustomerServiceClient
from lakala_server.wechat.cluster import POLL_SECONDS, Cluster, MessageShare, OutboxStream
from lakala_server.wechat.delivery import (
    DEDUPE_TTL_SECONDS,
    LAST_DELIVERY,
    TRANSFER,
    WECHAT_TIMEOUT_SECONDS,
    Deliveries,
    Delivery,
    Outbox,
)
from lakala_server.wechat.envelope import DEFAULT_MESSAGE_MODE, MESSAGE_MODES, Envelope, Inbound, Rejected
from lakala_server.wechat.expiring import UserStore
from lakala_server.wechat.render import Option, WeChatOutput, load_texts, render, resolve_option

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
        ttl = self.texts.options_ttl_seconds
        self._deliveries = Deliveries()
        self._first: Dict[str, asyncio.Task[bool]] = {}
        self._sender: Optional[asyncio.Task] = None
        self.cluster: Optional[Cluster] = None
        if shared.enabled():
            self.cluster = Cluster(appid, DEDUPE_TTL_SECONDS, config.current().wechat_outbox_reclaim_seconds)
            self.outbox = Outbox(self.api, ttl, self.cluster.user_store("carried", ttl))
            if self.api is not None:
                self.outbox.stream = OutboxStream(self.cluster, self.outbox.send_now)
            self._options: UserStore = self.cluster.user_store("options", ttl)
        else:
            self.outbox = Outbox(self.api, ttl)
            self._options = UserStore(ttl)

    def verify_and_parse(self, request: Request) -> Inbound:
        """The request's message, if it is WeChat's; raises Rejected otherwise."""
        return self.envelope.verify_and_parse(request)

    # --- dispatch -----------------------------------------------------------------------------

    async def _user_message(self, inbound: Inbound) -> Tuple[str, Optional[str]]:
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
        options = [Option(**option) for option in await self._options.pop(inbound.openid) or []]
        picked = resolve_option(text, options)
        if picked is not None:
            return "bot", picked.payload
        # Typed text is never read as an "/intent" payload: only offered options are.
        return "bot", text.strip().lstrip("/").strip()

    async def _process(self, inbound: Inbound, safe: Handler, raw: Handler) -> Optional[str]:
        """Runs one message through Rasa; returns the reply text, or None for no reply."""
        try:
            kind, text = await self._user_message(inbound)
        except Exception:
            logger.exception("reading the options offered to a WeChat user failed; answering with the failure response")
            return str(fallback.failure_message().get("text", "")) or None
        if kind != "bot" and kind != "reset":
            return text
        output = WeChatOutput()
        metadata = {"wechat": {"msg_type": inbound.msg_type, "event": inbound.event or None}}
        # Stored as `wechat:<openid>`: no other channel can address a WeChat conversation.
        sender = WECHAT_PREFIX + inbound.openid
        message = UserMessage(text, output, sender, input_channel=self.name(), metadata=metadata)
        try:
            if kind == "reset":
                await self._options.pop(inbound.openid)
                await self.outbox.forget(inbound.openid)
                await raw(message)
                return None
            await safe(message)
            if handoff.was_paused(output):
                return await self._transfer(inbound.openid, output)
            reply, options = render(output.messages, self.texts.option_line)
        except Exception:
            logger.exception("handling a WeChat message failed; answering with the failure response")
            return str(fallback.failure_message().get("text", "")) or None
        # The options offered in this turn replace whatever was offered before.
        try:
            if options:
                await self._options.put(inbound.openid, [dataclasses.asdict(option) for option in options])
            else:
                await self._options.pop(inbound.openid)
        except Exception:
            logger.exception("keeping the options offered to a WeChat user failed; they answer in words")
        return reply or None

    async def _transfer(self, openid: str, output: WeChatOutput) -> str:
        """A turn of a paused conversation: the message goes to the agents (the passive reply
        `transfer_customer_service`); what the bot said while handing over (正在为您转接…) is
        sent through the customer-service API, when there is one."""
        text, _ = render(output.messages, self.texts.option_line)
        try:
            await self._options.pop(openid)
        except Exception:
            logger.exception("forgetting the options offered to a WeChat user failed")
        if text and self.api is not None:
            self.outbox.spawn(self.outbox.send_now(openid, text))
        elif text:
            logger.info("no customer-service API (WECHAT_APPSECRET): the hand-over notice is not sent")
        return TRANSFER

    async def _agent_event(self, agent: Any, inbound: Inbound) -> Optional[str]:
        """WeChat's customer-service session events: an agent took the conversation
        (kf_create_session), passed it on (kf_switch_session) or closed it (kf_close_session,
        after which the bot answers again and says so)."""
        message: Any = inbound.message
        kind = inbound.event
        account = str(getattr(message, "to_account", None) or getattr(message, "account", None) or "")
        if agent is None or getattr(agent, "tracker_store", None) is None:
            logger.error("a customer-service event arrived before the bot was ready; ignored")
            return None
        was_paused = await handoff.agent_event(agent, WECHAT_PREFIX + inbound.openid, kind, account)
        if kind == handoff.KF_CLOSE and was_paused:
            return self.texts.handoff_ended
        return None

    def _start(self, inbound: Inbound, safe: Handler, raw: Handler) -> Delivery:
        """The Delivery of a message seen for the first time, its processing started."""
        share = MessageShare(self.cluster, inbound.key) if self.cluster is not None else None
        delivery = Delivery(inbound.openid, self.outbox, self.reply_deadline, self.texts.still_working, share=share)
        delivery.start(self._process(inbound, safe, raw))
        return delivery

    async def _delivery(self, inbound: Inbound, safe: Handler, raw: Handler) -> Optional[Delivery]:
        """The message's Delivery on this replica, started if this replica is the first to see
        the message; None if another replica handles it."""
        def start() -> Delivery:
            return self._start(inbound, safe, raw)

        if self.cluster is None:
            return self._deliveries.once(inbound.key, start)
        found = self._deliveries.get(inbound.key)
        if found is not None:
            return found
        # Concurrent deliveries to this replica ask Redis once.
        asking = self._first.get(inbound.key)
        if asking is None:
            asking = self._first[inbound.key] = asyncio.ensure_future(self.cluster.first_delivery(inbound.key))
            asking.add_done_callback(lambda _: self._first.pop(inbound.key, None))
        if await asyncio.shield(asking):
            return self._deliveries.once(inbound.key, start)
        return None

    async def _answer_from_elsewhere(self, inbound: Inbound, arrived: float) -> Optional[str]:
        """The passive reply for a delivery of a message another replica handles: its answer if
        published within the deadline and no other request or sender has claimed it, else None
        (acknowledged: the other replica sends it or keeps it for a retry), or without the API
        the apology on WeChat's last delivery."""
        loop = asyncio.get_running_loop()
        claimant = self.cluster.claimant()
        attempt = await self.cluster.count_delivery(inbound.key, 1)
        while True:
            found, reply = await self.cluster.published(inbound.key)
            if found:
                return reply if reply and await self.cluster.claim(inbound.key, claimant) else None
            remaining = self.reply_deadline - (loop.time() - arrived)
            if remaining <= 0:
                break
            await asyncio.sleep(min(POLL_SECONDS, remaining))
        if self.api is None and attempt >= LAST_DELIVERY:
            return self.texts.still_working
        if self.api is None:
            # As delivery.py does without the API: silent past WeChat's timeout, so that it retries.
            await asyncio.sleep(max(0.0, WECHAT_TIMEOUT_SECONDS + 1 - (loop.time() - arrived)))
        return None

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
            if inbound.msg_type == "event" and inbound.event in handoff.KF_EVENTS:
                try:
                    reply = await self._agent_event(getattr(request.app.ctx, "agent", None), inbound)
                except Exception:
                    logger.exception("recording a customer-service session event failed")
                    return response.text("", status=500)  # WeChat delivers it again
            else:
                delivery = await self._delivery(inbound, safe, on_new_message)
                if delivery is not None:
                    reply = await delivery.answer(arrived)
                else:
                    reply = await self._answer_from_elsewhere(inbound, arrived)
            if not reply:
                return response.text(ACK)
            if reply == TRANSFER:
                return response.text(self.envelope.transfer(inbound), content_type="application/xml; charset=utf-8")
            try:
                text = await self.outbox.passive(inbound.openid, reply)
            except Exception:
                logger.exception("reading the answers carried over to a WeChat user failed")
                text = reply
            xml = self.envelope.reply(text, inbound)
            return response.text(xml, content_type="application/xml; charset=utf-8")

        guard_server(wechat_webhook)

        @wechat_webhook.listener("after_server_start")
        async def start_sender(*_: Any) -> None:
            if self.outbox.stream is not None:
                self._sender = asyncio.ensure_future(self.outbox.stream.run())

        @wechat_webhook.listener("after_server_stop")
        async def close(*_: Any) -> None:
            if self._sender is not None:
                self._sender.cancel()
            await self.outbox.close()

        return wechat_webhook
