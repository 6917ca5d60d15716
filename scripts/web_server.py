"""Serves the web chat page: web/ and the Rasa Webchat bundle from web/node_modules, nothing else.

    WEB_HOST (127.0.0.1)  WEB_PORT (8080)  RASA_SOCKET_URL (http://localhost:5005)

The page learns where the Rasa server is from /config.js. The Rasa server must list this page's
origin in WEB_ALLOWED_ORIGINS (lakala_server/socketio.py) or it refuses the connection.
"""
import json
import logging
import os
import sys
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Tuple
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
WIDGET = WEB / "node_modules" / "rasa-webchat" / "lib" / "index.js"

# The bundle's CSS imports the Inter font from Google Fonts: a request to the internet (blocked
# in mainland China, where it stalls) for a Latin font our Chinese text does not use.
GOOGLE_FONTS_IMPORT = b"@import url(https://fonts.googleapis.com/css?family=Inter:400,500,700&display=swap);"

# rasa-webchat 1.0.1 accepts a `protocolOptions` prop and hands it to its socket.io factory, which
# drops it: the client always starts with HTTP long-polling, then upgrades. Behind several
# replicas (make cluster) the polling handshake and the upgrade land on different replicas and
# the session is refused. The factory is given its fourth argument, so `protocolOptions`
# ({transports: ["websocket"]} in lakala-chat.js) reaches socket.io-client.
SOCKETIO_FACTORY = b"socketio:function(e,t,n){var r=n?{path:n}:{},"
SOCKETIO_FACTORY_WITH_OPTIONS = b"socketio:function(e,t,n,p){var r=Object.assign(n?{path:n}:{},p),"

TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}
FILES = {"/": WEB / "index.html", "/index.html": WEB / "index.html",
         "/lakala-chat.js": WEB / "lakala-chat.js", "/lakala-chat.css": WEB / "lakala-chat.css"}

logger = logging.getLogger("web_server")


@lru_cache(maxsize=1)
def widget_bundle() -> bytes:
    bundle = WIDGET.read_bytes()
    if GOOGLE_FONTS_IMPORT not in bundle:
        logger.warning("%s no longer imports Google Fonts; check the bundle for other remote requests", WIDGET)
    if bundle.count(SOCKETIO_FACTORY) != 1:
        raise RuntimeError(f"{WIDGET}: the socket.io factory is not the one of rasa-webchat 1.0.1; check that "
                           "protocolOptions reaches socket.io-client and update web_server.py")
    return bundle.replace(GOOGLE_FONTS_IMPORT, b"").replace(SOCKETIO_FACTORY, SOCKETIO_FACTORY_WITH_OPTIONS)


def config_js(socket_url: str) -> bytes:
    config = {"socketUrl": socket_url}
    return f"window.LAKALA_CHAT_CONFIG = {json.dumps(config)};\n".encode()


class Handler(BaseHTTPRequestHandler):
    server_version = "lakala-web"
    socket_url = "http://localhost:5005"

    def resolve(self, path: str) -> Tuple[bytes, str]:
        if path == "/config.js":
            return config_js(self.socket_url), TYPES[".js"]
        if path == "/widget/rasa-webchat.js":
            return widget_bundle(), TYPES[".js"]
        return FILES[path].read_bytes(), TYPES[FILES[path].suffix]

    def send_body(self, with_body: bool) -> None:
        path = urlsplit(self.path).path
        try:
            body, content_type = self.resolve(path)
        except KeyError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send_response(HTTPStatus.OK)
        headers: Dict[str, str] = {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        }
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_body(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_body(with_body=False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        logger.info("%s %s", self.address_string(), format % args)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    host = os.environ.get("WEB_HOST", "127.0.0.1")
    port = int(os.environ.get("WEB_PORT", "8080"))
    Handler.socket_url = os.environ.get("RASA_SOCKET_URL", "http://localhost:5005").rstrip("/")
    if not WIDGET.exists():
        print(f"{WIDGET} is missing: run `npm ci` in web/ (make does it)", file=sys.stderr)
        return 1
    widget_bundle()
    server = ThreadingHTTPServer((host, port), Handler)
    logger.info("serving the web chat on http://%s:%d/ (Rasa socket.io at %s)", host, port, Handler.socket_url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
