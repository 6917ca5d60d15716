"""A web-chat visitor for tests: a real socket.io client that connects to the real Rasa server
the way the widget does (WebSocket, `session_request`, then `user_uttered`)."""
import asyncio
import threading
from typing import Any, Dict, List, Optional

import socketio


class Visitor:
    """One browser tab: a socket.io client over WebSocket, as the widget connects."""

    def __init__(self, bot, headers: Optional[Dict[str, str]] = None) -> None:
        self.bot, self.headers = bot, headers or {}
        self.client = socketio.AsyncClient(reconnection=False)
        self.session_id: Optional[str] = None
        self.answers: List[Dict[str, Any]] = []
        self.confirmed = asyncio.Event()
        self.client.on("session_confirm", self._confirm)
        self.client.on("bot_uttered", self._answer)

    async def _confirm(self, session_id: str) -> None:
        self.session_id = session_id
        self.confirmed.set()

    async def _answer(self, message: Dict[str, Any]) -> None:
        self.answers.append(message)

    async def connect(self) -> None:
        if not self.client.connected:
            await self.client.connect(f"http://127.0.0.1:{self.bot.rasa_port}", headers=self.headers,
                                      transports=["websocket"], socketio_path="/socket.io")

    async def join(self, session_id: Any = None) -> str:
        await self.connect()
        self.confirmed.clear()
        await self.client.emit("session_request", {"session_id": session_id})
        await asyncio.wait_for(self.confirmed.wait(), 10)
        return self.session_id

    async def say(self, text: str, session_id: Optional[str] = None, wait: float = 15) -> List[str]:
        return await self.send({"message": text, "session_id": session_id or self.session_id}, wait)

    async def send(self, data: Any, wait: float = 15) -> List[str]:
        """Emits `data` as a user message, exactly as given; the texts of this turn's answers."""
        before = len(self.answers)
        await self.client.emit("user_uttered", data)
        deadline = asyncio.get_running_loop().time() + wait
        while len(self.answers) == before and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the rest of this turn's messages
        return [answer.get("text", "") for answer in self.answers[before:]]

    async def close(self) -> None:
        await self.client.disconnect()

    async def close_quietly(self) -> None:
        """Disconnects if still connected; a socket whose server died is simply dropped."""
        try:
            await self.client.disconnect()
        except Exception:  # noqa: BLE001 - nothing to close on a dead connection
            pass


def run(coroutine: Any) -> Any:
    """In a thread of its own, so it works beside Playwright's loop in the same session."""
    result: List[Any] = []
    errors: List[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]
