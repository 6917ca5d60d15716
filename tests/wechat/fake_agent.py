"""A Sanic server with the real WeChat channel mounted by Rasa's own `register`, in front of
a scripted agent instead of a trained model: quick to start, and its timing is exact.

    python -m tests.wechat.fake_agent PORT      (WECHAT_* settings from the environment)

What the agent answers depends on the text it gets (see ScriptedAgent); GET /test/received
lists every UserMessage that reached it, so tests can prove that a request did not. GET
/test/calls counts the calls that check a signature, decrypt or parse XML, in the channel and
in the libraries under it, so tests can prove that a message is verified and parsed once."""
import asyncio
import functools
import os
import sys
from collections import Counter
from typing import Any, Dict, List

import defusedxml.ElementTree
import xmltodict
from rasa.core.channels.channel import UserMessage, register
from sanic import Sanic, response
from sanic.request import Request
from wechatpy.crypto import BaseWeChatCrypto, PrpCrypto

from lakala_server.wechat import WeChatInput, envelope

GREETING_BUTTONS = [
    {"title": "查询终端状态", "payload": "/check_terminal_status"},
    {"title": "押金能退吗", "payload": "押金能退吗"},
]


class ScriptedAgent:
    """Stands in for rasa.core.agent.Agent.handle_message."""

    def __init__(self) -> None:
        self.received: List[Dict[str, Any]] = []

    async def handle_message(self, message: UserMessage) -> None:
        self.received.append(
            {"text": message.text, "sender": message.sender_id, "metadata": message.metadata}
        )
        text, out, sender = message.text or "", message.output_channel, message.sender_id
        if text == "/restart" or text == "silent":
            return
        if text == "fail":
            raise RuntimeError("the scripted agent fails on purpose")
        if text.startswith("slow "):
            await asyncio.sleep(float(text.split()[1]))
            await out.send_response(sender, {"text": f"慢回答：{text}"})
        elif text == "/greet":
            await out.send_response(sender, {"text": "欢迎关注", "buttons": list(GREETING_BUTTONS)})
        elif text == "two":
            await out.send_response(sender, {"text": "第一条", "buttons": [{"title": "甲", "payload": "/affirm"}]})
            await out.send_response(sender, {"text": "第二条", "buttons": [{"title": "乙", "payload": "/deny"}]})
        elif text == "long":
            await out.send_response(sender, {"text": "\n".join(["长" * 100] * 10)})
        elif text == "cdata":
            await out.send_response(sender, {"text": "a]]>b<c>&d"})
        else:
            await out.send_response(sender, {"text": f"收到：{text}"})


CALLS: Counter = Counter()


def count_calls(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def counted(*args: Any, **kwargs: Any) -> Any:
        CALLS[label] += 1
        return original(*args, **kwargs)

    setattr(owner, name, counted)


def count_verifying_and_parsing() -> None:
    count_calls(envelope, "_sign", "signature checked")
    count_calls(BaseWeChatCrypto, "_decrypt_message", "signature checked by wechatpy")
    count_calls(BaseWeChatCrypto, "_check_signature", "signature checked by wechatpy")
    count_calls(PrpCrypto, "decrypt", "decrypted")
    count_calls(defusedxml.ElementTree, "fromstring", "XML parsed")
    count_calls(xmltodict, "parse", "XML parsed by xmltodict")


def build_app() -> Sanic:
    app = Sanic("fake_rasa_wechat")
    agent = ScriptedAgent()
    app.ctx.agent = agent
    channel = WeChatInput.from_credentials({
        "token": os.environ["WECHAT_TOKEN"],
        "appid": os.environ["WECHAT_APPID"],
        "encoding_aes_key": os.environ["WECHAT_ENCODING_AES_KEY"],
        "appsecret": os.environ.get("WECHAT_APPSECRET", ""),
    })
    register([channel], app, route="/webhooks/")
    count_verifying_and_parsing()

    @app.get("/test/received")
    async def received(request: Request) -> Any:
        sender = request.args.get("sender")
        return response.json([m for m in agent.received if sender is None or m["sender"] == sender])

    @app.get("/test/calls")
    async def calls(_: Request) -> Any:
        return response.json(dict(CALLS))

    return app


if __name__ == "__main__":
    build_app().run(host="127.0.0.1", port=int(sys.argv[1]), access_log=False, motd=False)
