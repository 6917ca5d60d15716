"""A client that retries, as docs/clients.md describes it: REST requests and web-chat messages
carrying a client message id, and what the tracker store kept of them."""
import asyncio
import json
import urllib.request
from typing import Any, Dict, List, Optional

import sqlalchemy as sa


def post(bot, sender: str, text: str, message_id: Optional[Any] = None, timeout: float = 60) -> List[Dict[str, Any]]:
    """One REST request; the bot's answer as the channel returns it."""
    body: Dict[str, Any] = {"sender": sender, "message": text}
    if message_id is not None:
        body["metadata"] = {"message_id": message_id}
    request = urllib.request.Request(
        f"http://127.0.0.1:{bot.rasa_port}/webhooks/rest/webhook",
        data=json.dumps(body, ensure_ascii=False).encode(), headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def user_messages(tracker_db_url: str, conversation: str) -> List[Dict[str, Any]]:
    """The user messages the tracker store kept for a conversation (`rest:...`, `web:...`)."""
    engine = sa.create_engine(tracker_db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text(
                "SELECT data FROM events WHERE sender_id = :sender AND type_name = 'user' ORDER BY id"),
                {"sender": conversation}).scalars().all()
        return [json.loads(row) for row in rows]
    finally:
        engine.dispose()


def with_id(visitor, text: str, message_id: str) -> Dict[str, Any]:
    """A web-chat message as a retrying client sends it."""
    return {"message": text, "session_id": visitor.session_id, "metadata": {"message_id": message_id}}


async def answers_settled(visitor, at_least: int, quiet: float = 1.5, wait: float = 60) -> List[Dict[str, Any]]:
    """The visitor's answers once there are `at_least` and no more came for `quiet` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    count, since = len(visitor.answers), loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.1)
        if len(visitor.answers) != count:
            count, since = len(visitor.answers), loop.time()
        elif count >= at_least and loop.time() - since >= quiet:
            break
    return list(visitor.answers)
