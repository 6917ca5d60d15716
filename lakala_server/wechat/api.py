"""WeChat's customer-service message API (客服消息), for answers that were not ready within
WeChat's 5-second window: an aiohttp client with a cached access_token. With REDIS_URL the
token is kept in Redis where wechatpy's RedisStorage keeps it (`lakala:wechatpy:<appid>_access_token`,
JSON), and one replica at a time fetches it, under a Redis lock; the others wait and read it."""
import asyncio
import json
import logging
import time
from typing import Any, Dict, List, Optional, Tuple

import aiohttp
from redis.exceptions import RedisError
from wechatpy.constants import WeChatErrorCode

from lakala_server import config, shared

logger = logging.getLogger(__name__)

# WeChat refuses text messages longer than 2048 bytes (UTF-8), passive or customer-service.
TEXT_LIMIT_BYTES = 2048
TOKEN_ERRORS = {
    WeChatErrorCode.INVALID_CREDENTIAL,
    WeChatErrorCode.INVALID_ACCESS_TOKEN,
    WeChatErrorCode.EXPIRED_ACCESS_TOKEN,
}
# Refresh this long before WeChat says the token expires (its tokens live 7200 s).
MAX_REFRESH_MARGIN_SECONDS = 300.0
# wechatpy.session.redisstorage.RedisStorage(redis, prefix=TOKEN_PREFIX) reads the same token.
TOKEN_PREFIX = shared.key("wechatpy")
# The refresh lock outlives one token request (10 s); a replica waits this long for another's.
TOKEN_LOCK_SECONDS = 15.0


class WeChatAPIError(Exception):
    """WeChat answered with a non-zero errcode, or could not be reached."""

    def __init__(self, errcode: int, errmsg: str = "") -> None:
        super().__init__(f"errcode {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


def api_base_from_env() -> str:
    return config.current().wechat_api_base


def split_text(text: str, limit: int = TEXT_LIMIT_BYTES) -> List[str]:
    """Pieces of at most `limit` UTF-8 bytes, cut at line breaks where possible."""
    pieces: List[str] = []
    current = ""
    for line in text.split("\n"):
        candidate = f"{current}\n{line}" if current else line
        if len(candidate.encode("utf-8")) <= limit:
            current = candidate
            continue
        if current:
            pieces.append(current)
        current = ""
        for char in line:
            if len((current + char).encode("utf-8")) > limit:
                pieces.append(current)
                current = ""
            current += char
    if current.strip():
        pieces.append(current)
    return pieces


class CustomerServiceClient:
    """Sends text through `/cgi-bin/message/custom/send`, fetching and caching the access_token."""

    def __init__(
        self,
        appid: str,
        appsecret: str,
        api_base: Optional[str] = None,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._appid = appid
        self._secret = appsecret
        self.api_base = (api_base or api_base_from_env()).rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: Optional[aiohttp.ClientSession] = None
        self._token: Optional[str] = None
        self._token_expires_at = 0.0
        self._token_lock: Optional[asyncio.Lock] = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _call(self, method: str, path: str, **kwargs: Any) -> Dict[str, Any]:
        # URLs carry the secret or the token: errors are logged by type and errcode only.
        try:
            async with self._http().request(method, f"{self.api_base}{path}", **kwargs) as response:
                raw = await response.read()
            result = json.loads(raw.decode("utf-8"))
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
            raise WeChatAPIError(-1, f"request failed: {type(error).__name__}") from None
        if not isinstance(result, dict):
            raise WeChatAPIError(-1, "unexpected answer")
        errcode = int(result.get("errcode") or 0)
        if errcode != 0:
            raise WeChatAPIError(errcode, str(result.get("errmsg", "")))
        return result

    def token_key(self) -> str:
        """Where wechatpy's RedisStorage keeps this account's token (its WeChatClient's key)."""
        return f"{TOKEN_PREFIX}:{self._appid}_access_token"

    async def _fetch_token(self) -> Tuple[str, float]:
        """A new token from WeChat and how long to use it."""
        result = await self._call(
            "GET",
            "/cgi-bin/token",
            params={"grant_type": "client_credential", "appid": self._appid, "secret": self._secret},
        )
        token = result.get("access_token")
        if not token:
            raise WeChatAPIError(-1, "no access_token in the answer")
        lifetime = float(result.get("expires_in") or 7200)
        logger.info("WeChat access_token fetched; valid for %.0f s", lifetime)
        return str(token), lifetime - min(MAX_REFRESH_MARGIN_SECONDS, lifetime / 10)

    async def _shared_token(self, redis: Any, rejected: Optional[str]) -> str:
        key = self.token_key()

        async def stored() -> Optional[str]:
            raw = await redis.get(key)
            token = json.loads(raw) if raw is not None else None
            return token if token and token != rejected else None

        token = await stored()
        if token:
            return token
        # One refresher at a time (SET NX PX); the others wait for the lock, then read its token.
        lock = redis.lock(key + ":refresh", timeout=TOKEN_LOCK_SECONDS, sleep=0.05,
                          blocking_timeout=TOKEN_LOCK_SECONDS)
        if not await lock.acquire():
            raise WeChatAPIError(-1, "another replica is still fetching the access_token")
        try:
            token = await stored()
            if token:
                return token
            token, use_for = await self._fetch_token()
            await redis.set(key, json.dumps(token), ex=max(1, int(use_for)))
            return token
        finally:
            try:
                await lock.release()
            except RedisError:
                pass  # it expired: the next refresher takes it

    async def access_token(self, rejected: Optional[str] = None) -> str:
        """The cached token, fetched again when close to expiry or when WeChat `rejected` it."""
        redis = shared.client()
        if redis is not None:
            try:
                return await self._shared_token(redis, rejected)
            except RedisError as error:
                raise WeChatAPIError(-1, f"Redis failed: {type(error).__name__}") from None
        if self._token_lock is None:
            self._token_lock = asyncio.Lock()
        async with self._token_lock:
            # Another caller may have fetched a new one while this one waited for the lock.
            if self._token and self._token != rejected and time.monotonic() < self._token_expires_at:
                return self._token
            token, use_for = await self._fetch_token()
            self._token, self._token_expires_at = token, time.monotonic() + use_for
            return self._token

    async def _send(self, payload: Dict[str, Any]) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8"}
        rejected: Optional[str] = None
        for attempt in range(2):
            token = await self.access_token(rejected)
            try:
                await self._call(
                    "POST", "/cgi-bin/message/custom/send", params={"access_token": token}, data=body, headers=headers
                )
                return
            except WeChatAPIError as error:
                if attempt == 0 and error.errcode in TOKEN_ERRORS:
                    logger.info("WeChat rejected the access_token (errcode %s); fetching a new one", error.errcode)
                    rejected = token
                elif attempt == 0 and error.errcode == WeChatErrorCode.SYSTEM_BUSY:
                    await asyncio.sleep(0.5)
                else:
                    raise

    async def send_text(self, openid: str, text: str) -> int:
        """Sends `text` as one or more text messages; returns how many were sent."""
        pieces = split_text(text)
        for piece in pieces:
            await self._send({"touser": openid, "msgtype": "text", "text": {"content": piece}})
        return len(pieces)
