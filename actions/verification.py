"""The verified-terminal marker: proof, kept in the `verified_terminal` slot, that this
conversation gave a terminal number and its matching phone tail.

A slot value is whatever the caller of the action server says it is, so the marker is not
the bare terminal number. It is `<terminal>.<expiry>.<mac>`, where the MAC (HMAC-SHA256 with
VERIFICATION_SECRET) covers the terminal, the conversation's sender id and the expiry. A
marker copied into another conversation, edited, or older than VERIFICATION_TTL_MINUTES
is worth nothing, and every action that reveals or changes a terminal checks it.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from typing import Any, Optional

from actions.config import get_settings

logger = logging.getLogger(__name__)

_MAC_HEX = 32
_process_secret: Optional[bytes] = None


def _secret() -> bytes:
    """VERIFICATION_SECRET, or one random secret for this process when it is not set
    (markers then die with the process, and several action servers would not agree)."""
    global _process_secret
    configured = get_settings().verification_secret
    if configured:
        return configured.encode()
    if _process_secret is None:
        logger.warning("VERIFICATION_SECRET is not set: using a random secret for this process only")
        _process_secret = secrets.token_bytes(32)
    return _process_secret


def ttl_seconds() -> float:
    return get_settings().verification_ttl_minutes * 60


def _mac(terminal_id: str, sender_id: str, expires: int) -> str:
    message = f"{terminal_id}|{sender_id}|{expires}".encode()
    return hmac.new(_secret(), message, hashlib.sha256).hexdigest()[:_MAC_HEX]


def sign(terminal_id: str, sender_id: str, now: Optional[float] = None) -> str:
    """The marker for `terminal_id`, verified just now in the conversation `sender_id`."""
    expires = int((time.time() if now is None else now) + ttl_seconds())
    return f"{terminal_id}.{expires}.{_mac(terminal_id, sender_id, expires)}"


def verified_terminal(marker: Any, sender_id: str, now: Optional[float] = None) -> Optional[str]:
    """The terminal a marker proves for this conversation, or None when it proves nothing."""
    if not isinstance(marker, str) or marker.count(".") != 2:
        return None
    terminal_id, expires_text, mac = marker.split(".")
    if not expires_text.isdigit() or len(mac) != _MAC_HEX:
        return None
    expires = int(expires_text)
    if not hmac.compare_digest(mac, _mac(terminal_id, str(sender_id), expires)):
        return None
    if (time.time() if now is None else now) >= expires:
        return None
    return terminal_id
