"""The WeChat Official Account (公众号) channel, in the shape of wechatpy's own split:

    envelope.py   signature, replay check, AES crypto and XML, both ways
    render.py     the bot's messages as WeChat text and numbered options; the channel's texts
    delivery.py   one message however often WeChat delivers it: the Delivery state machine,
                  the outbox for late answers, the dedupe
    channel.py    the Rasa InputChannel (credentials.wechat.yml names it lakala_server.wechat.WeChatInput)
    api.py        WeChat's customer-service message API client (the access_token in Redis with REDIS_URL)
    cluster.py    what replicas share in Redis (REDIS_URL): dedupe, published answers, the outbox stream
    expiring.py   the small expiring per-user stores the others share (in memory or Redis)
    simulator.py  WeChat's side, for the demo and the tests (python -m lakala_server.wechat.simulator)
"""
from typing import Any

__all__ = ["WeChatInput"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so the simulator (and `make wechat-demo`) does not load Rasa.
    if name == "WeChatInput":
        from lakala_server.wechat.channel import WeChatInput

        return WeChatInput
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
