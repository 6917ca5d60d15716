"""The web chat page in headless Chromium, against the real servers: what a merchant sees."""
import inspect
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from typing import List

import socketio
from playwright.sync_api import Page

from tests.browser.conftest import RESULTS, WebChat
from tests.support.expect import pattern
from tests.support.servers import DOMAIN, ROOT

REPLY = ".rw-response .rw-message-text"
SENT = ".rw-client .rw-message-text"
INPUT = "textarea.rw-new-message"


def replies(page: Page) -> List[str]:
    return [text.strip() for text in page.locator(REPLY).all_inner_texts()]


def sent(page: Page) -> List[str]:
    return [text.strip() for text in page.locator(SENT).all_inner_texts()]


def wait_for_reply(page: Page, response: str, timeout: float = 30, **values: str) -> None:
    regex = pattern(response, **values)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(regex.match(text) for text in replies(page)):
            return
        page.wait_for_timeout(200)
    raise AssertionError(
        f"no {response} {values} within {timeout}s; the page shows {replies(page)}. If nothing at all "
        "arrives after the greeting's request, check python-socketio is 5.8.0 (see requirements.in)."
    )


def say(page: Page, text: str) -> None:
    page.locator(INPUT).fill(text)
    page.locator(INPUT).press("Enter")


def open_chat(page: Page, web_chat: WebChat) -> None:
    page.goto(web_chat.url)
    wait_for_reply(page, "utter_greet")


def test_socketio_joins_rooms_synchronously():
    # Rasa 3.6.21 calls sio.enter_room() without await. From python-socketio 5.10 it is a
    # coroutine: the session room is never joined and the browser waits for answers forever.
    assert not inspect.iscoroutinefunction(socketio.AsyncServer.enter_room), (
        f"python-socketio {version('python-socketio')} makes enter_room a coroutine, which "
        "Rasa 3.6 does not await: pin python-socketio==5.8.0"
    )


def test_chinese_page_with_greeting_buttons_and_no_internet(page: Page, web_chat: WebChat, remote_requests):
    open_chat(page, web_chat)
    assert page.title() == "拉卡拉客服助手"
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert page.locator(".rw-title").inner_text() == "拉卡拉客服助手"
    assert page.locator(INPUT).get_attribute("placeholder") == "请输入您的问题，例如：押金能退吗"
    buttons = page.locator(".rw-reply").all_inner_texts()
    assert buttons == [button["title"] for button in DOMAIN["responses"]["utter_greet"][0]["buttons"]]
    font = page.locator(REPLY).first.evaluate("element => getComputedStyle(element).fontFamily")
    assert "Noto Sans CJK SC" in font and "Inter" not in font
    assert remote_requests == [], "the page must work without internet access"


def test_the_widget_speaks_websocket_only(page: Page, web_chat: WebChat):
    """No long-polling: a connection is one WebSocket request, which any replica behind nginx can
    hold without sticky sessions (make cluster). rasa-webchat drops `protocolOptions` on its own;
    scripts/web_server.py hands them on."""
    polling: List[str] = []
    sockets: List[str] = []
    page.on("request", lambda request: polling.append(request.url) if "transport=polling" in request.url else None)
    page.on("websocket", lambda socket: sockets.append(socket.url))
    open_chat(page, web_chat)
    assert polling == []
    assert len(sockets) == 1 and "transport=websocket" in sockets[0] and "sid=" not in sockets[0]


def test_question_button_terminal_lookup_and_reload(page: Page, web_chat: WebChat, remote_requests):
    open_chat(page, web_chat)

    say(page, "押金能退吗")
    wait_for_reply(page, "utter_deposit")

    # The deposit answer offers the next steps as buttons; the greeting's were used up.
    page.locator(".rw-reply", has_text="查询终端状态").last.click()
    wait_for_reply(page, "utter_ask_terminal_id")
    assert sent(page)[-1] == "查询终端状态"

    say(page, "30091254")
    wait_for_reply(page, "utter_ask_phone_tail")
    before = replies(page)

    # Half-way through the lookup: a reload shows the same conversation and the form goes on.
    page.reload()
    page.wait_for_selector(REPLY)
    page.wait_for_function(f"document.querySelectorAll('{REPLY}').length >= {len(before)}")
    assert replies(page) == before
    assert sent(page) == ["押金能退吗", "查询终端状态", "30091254"]

    say(page, "6721")
    wait_for_reply(page, "utter_status_active", terminal_id="30091254")
    wait_for_reply(page, "utter_fee_due", fee="200")
    page.wait_for_timeout(500)
    RESULTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(RESULTS / "web-chat.png"))
    assert remote_requests == []


def test_enter_during_input_method_composition_sends_nothing(page: Page, web_chat: WebChat):
    open_chat(page, web_chat)
    page.locator(INPUT).click()
    cdp = page.context.new_cdp_session(page)
    # What a Pinyin input method does: the letters stay "composing" until a candidate is picked.
    cdp.send("Input.imeSetComposition", {"text": "ya", "selectionStart": 2, "selectionEnd": 2})
    cdp.send("Input.imeSetComposition", {"text": "yajin", "selectionStart": 5, "selectionEnd": 5})
    assert page.evaluate("document.activeElement.value") == "yajin"
    page.keyboard.press("Enter")  # a keydown with keyCode 13 while isComposing is true
    page.wait_for_timeout(1500)
    assert sent(page) == [], "Enter inside a composition sent the half-typed pinyin"
    assert page.locator(INPUT).input_value() == "yajin"

    cdp.send("Input.insertText", {"text": "押金"})  # the candidate is picked: composition ends
    assert page.locator(INPUT).input_value() == "押金"
    page.wait_for_timeout(500)
    assert sent(page) == []

    page.keyboard.press("Enter")  # now Enter sends
    wait_for_reply(page, "utter_deposit")
    assert sent(page) == ["押金"]


OPEN_WEBSOCKET = """url => new Promise(resolve => {
    const socket = new WebSocket(url);
    socket.onmessage = event => { resolve("open " + event.data.slice(0, 1)); socket.close(); };
    socket.onerror = () => resolve("refused");
})"""


def test_other_origins_are_refused(page: Page, web_chat: WebChat):
    websocket = re.sub("^http", "ws", web_chat.socket_url) + "/socket.io/?EIO=4&transport=websocket"
    page.goto(web_chat.url)
    assert page.evaluate(OPEN_WEBSOCKET, websocket) == "open 0"  # engine.io's "open" packet

    # The same page from another origin (localhost is not 127.0.0.1 to a browser).
    page.goto(web_chat.url.replace("127.0.0.1", "localhost"))
    assert page.evaluate(OPEN_WEBSOCKET, websocket) == "refused"
    page.wait_for_timeout(2000)
    assert replies(page) == [], "the widget got answers on a page from an origin that is not allowed"


def readme_snippet() -> str:
    web_chat_section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Web chat", 1)[1]
    return re.search(r"```html\n(.*?)```", web_chat_section, re.S).group(1)


def serve_once(port: int, html: str) -> ThreadingHTTPServer:
    class Shop(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Shop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_readme_embed_snippet_on_another_site(page: Page, web_chat: WebChat, remote_requests):
    snippet = (readme_snippet().replace("https://chat.example.com", web_chat.url.rstrip("/"))
               .replace("https://bot.example.com", web_chat.socket_url))
    shop = serve_once(web_chat.shop_port, f"<!DOCTYPE html><html lang=zh-CN><meta charset=utf-8><body>"
                                          f"<h1>张记便利店</h1>{snippet}</body></html>")
    try:
        page.goto(f"http://127.0.0.1:{web_chat.shop_port}/")
        page.locator(".rw-launcher").click()
        wait_for_reply(page, "utter_greet")
        assert page.locator(".rw-title").inner_text() == "拉卡拉客服助手"
        say(page, "押金能退吗")
        wait_for_reply(page, "utter_deposit")
        assert remote_requests == []
    finally:
        shop.shutdown()
        shop.server_close()


def test_a_typed_button_title_works_like_the_button(page: Page, web_chat: WebChat):
    open_chat(page, web_chat)
    say(page, "我要注销终端K7306118")
    wait_for_reply(page, "utter_ask_phone_tail")
    say(page, "0839")
    wait_for_reply(page, "utter_deregistration_no_fee", terminal_id="K7306118")
    page.wait_for_function("document.querySelectorAll('.rw-reply').length >= 2")
    assert page.locator(".rw-reply").all_inner_texts()[-2:] == ["确认注销", "先不注销"]
    # The merchant types the button's words (with a full stop) instead of tapping it.
    say(page, "先不注销。")
    wait_for_reply(page, "utter_deregistration_cancelled", terminal_id="K7306118")
    assert sent(page)[-1] == "先不注销。"


OPEN_POLLING = """url => fetch(url).then(
    answer => answer.text().then(body => "open " + body.slice(0, 1)),
    () => "refused")"""


def test_other_origins_are_refused_on_the_polling_transport_too(page: Page, web_chat: WebChat):
    polling = web_chat.socket_url + "/socket.io/?EIO=4&transport=polling"
    page.goto(web_chat.url)
    assert page.evaluate(OPEN_POLLING, polling) == "open 0"
    page.goto(web_chat.url.replace("127.0.0.1", "localhost"))
    assert page.evaluate(OPEN_POLLING, polling) == "refused"


def test_a_callback_request_in_the_web_chat(page: Page, web_chat: WebChat):
    """转人工 on the page: the offer's button, the topic, consent by button, the number, a ticket
    in the registry, the team told on its WeCom group with the number masked."""
    open_chat(page, web_chat)
    say(page, "转人工")
    wait_for_reply(page, "utter_handoff_offer")
    page.locator(".rw-reply", has_text="留电话等回电").last.click()
    wait_for_reply(page, "utter_ask_callback_topic")
    say(page, "机器不用了，想问押金怎么退")
    wait_for_reply(page, "utter_ask_callback_consent")
    page.locator(".rw-reply", has_text=re.compile(r"^同意$")).click()  # not 不同意
    wait_for_reply(page, "utter_ask_callback_phone")
    say(page, "137 0000 2468")
    wait_for_reply(page, "utter_callback_created", phone="137****2468")
    ticket = re.search(r"单号(HJ\w+)", replies(page)[-1]).group(1)
    page.wait_for_timeout(300)
    RESULTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(RESULTS / "web-chat-callback.png"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(ticket in c for c in web_chat.wecom.contents()):
        time.sleep(0.2)
    [posted] = [c for c in web_chat.wecom.contents() if ticket in c]
    assert "137****2468" in posted and "13700002468" not in posted and "网页" in posted
