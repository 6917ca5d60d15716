"""WeChat's envelope around a message: the URL signature, the replay check, the AES crypto
and the XML, both ways. Each request is verified once and parsed once: the signatures are
checked here (in constant time) and nowhere else, the ciphertext is decrypted without a
second signature check, and the message XML is read by one safe parser whose fields become
wechatpy's message object.
"""
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, Tuple
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as safe_xml
from wechatpy import create_reply
from wechatpy.crypto import PrpCrypto, WeChatCrypto
from wechatpy.events import EVENT_TYPES
from wechatpy.exceptions import InvalidAppIdException
from wechatpy.messages import MESSAGE_TYPES, BaseMessage, UnknownMessage
from wechatpy.replies import TransferCustomerServiceReply
from wechatpy.utils import WeChatSigner

from lakala_server import config
from lakala_server.wechat.expiring import Expiring

MAX_CLOCK_SKEW_SECONDS = 300
MAX_BODY_BYTES = 64 * 1024
# The account's message encryption (公众号 console: 明文 / 兼容 / 安全模式). In safe mode a
# request that is not encrypted and signed is refused, so nobody can downgrade to plaintext.
MESSAGE_MODES = ("safe", "compatible", "plaintext")
DEFAULT_MESSAGE_MODE = config.DEFAULT_WECHAT_MESSAGE_MODE
OPENID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


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


def _message(fields: Dict[str, str]) -> BaseMessage:
    """wechatpy's object for the message's fields, by its type (and event) name."""
    msg_type = fields.get("MsgType", "").lower()
    if msg_type == "event":
        return EVENT_TYPES.get(fields.get("Event", "").lower(), UnknownMessage)(fields)
    return MESSAGE_TYPES.get(msg_type, UnknownMessage)(fields)


def _cdata_safe(text: str) -> str:
    # wechatpy wraps the content in one CDATA section, which "]]>" would end early.
    return text.replace("]]>", "]]]]><![CDATA[>")


class Envelope:
    """Opens WeChat's requests for one Official Account and seals the passive replies."""

    def __init__(self, token: str, appid: str, encoding_aes_key: str, message_mode: str) -> None:
        self.token = token
        self.appid = appid
        self.message_mode = message_mode
        self.crypto = WeChatCrypto(token, encoding_aes_key, appid)
        # (timestamp, nonce) -> digest of the body, for as long as the timestamp is accepted.
        self._nonces = Expiring(2 * MAX_CLOCK_SKEW_SECONDS)

    def verify_signature(self, args: Any) -> Tuple[str, str]:
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

    def _decrypt(self, envelope: Element, msg_signature: str, timestamp: str, nonce: str) -> bytes:
        ciphertext = envelope.findtext("Encrypt") or ""
        if not (ciphertext and msg_signature):
            raise Rejected(400, "encrypted message without Encrypt or msg_signature")
        if not _same(_sign(self.token, timestamp, nonce, ciphertext), msg_signature):
            raise Rejected(403, "bad msg_signature")
        try:
            # wechatpy's decrypt_message would check msg_signature a second time.
            return PrpCrypto(self.crypto.key).decrypt(ciphertext, self.appid).encode("utf-8")
        except InvalidAppIdException:
            raise Rejected(403, "message encrypted for another AppID") from None
        except Exception:
            raise Rejected(400, "undecryptable message") from None

    def verify_and_parse(self, request: Any) -> Inbound:
        """The request's message, if it is WeChat's; raises Rejected otherwise."""
        timestamp, nonce = self.verify_signature(request.args)
        body = request.body or b""
        if len(body) > MAX_BODY_BYTES:
            raise Rejected(413, "body too large")
        encrypt_type = request.args.get("encrypt_type") or "raw"
        if encrypt_type not in ("aes", "raw"):
            raise Rejected(400, "unknown encrypt_type")
        if self.message_mode == "safe" and encrypt_type != "aes":
            raise Rejected(403, "the account is in safe mode: unencrypted request refused")
        self._check_nonce(timestamp, nonce, body)
        root = _parse_xml(body)
        if encrypt_type == "aes":
            root = _parse_xml(self._decrypt(root, request.args.get("msg_signature") or "", timestamp, nonce))
        fields = {child.tag: (child.text or "").strip() for child in root}
        message = _message(fields)
        openid = str(message.source or "")
        msg_type = fields.get("MsgType", "").lower()
        if not OPENID_RE.fullmatch(openid) or not msg_type:
            raise Rejected(400, "message without a valid FromUserName or MsgType")
        event = fields.get("Event", "").lower() if msg_type == "event" else ""
        msg_id = fields.get("MsgId", "")
        # WeChat's own advice: dedupe messages by MsgId and events by FromUserName + CreateTime
        # (the event name is added so two different events in one second stay apart).
        if msg_id:
            key = f"msg:{openid}:{msg_id}"
        else:
            key = f"event:{openid}:{fields.get('CreateTime', '')}:{event}"
        return Inbound(openid, message, encrypt_type == "aes", nonce, key, msg_type, event)

    def reply(self, text: str, inbound: Inbound) -> str:
        """The passive reply's XML, encrypted when the request was."""
        return self._sealed(create_reply(_cdata_safe(text), message=inbound.message).render(), inbound)

    def transfer(self, inbound: Inbound) -> str:
        """The passive reply that hands the message to the 公众号's customer-service agents
        (MsgType transfer_customer_service), encrypted when the request was."""
        return self._sealed(TransferCustomerServiceReply(message=inbound.message).render(), inbound)

    def _sealed(self, xml: str, inbound: Inbound) -> str:
        if inbound.encrypted:
            xml = self.crypto.encrypt_message(xml, inbound.nonce)
        return xml
