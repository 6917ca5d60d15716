"""A TCP relay for tests, between a client and a real server on this machine: it passes bytes
both ways until told otherwise. `freeze()` stops passing bytes either way, as a network
partition would (the connection stays open and a request waits for an answer that never
comes); `before_request`, when armed, runs once as the next chunk from a client arrives, before
it is passed on; `close()` ends every relayed connection."""
import socket
import threading
from typing import Callable, List, Optional


class TcpRelay:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.before_request: Optional[Callable[[], None]] = None
        self._frozen, self._closed = threading.Event(), threading.Event()
        self._sockets: List[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self._upstream)
            except OSError:
                return
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if self._frozen.is_set():
                    self._closed.wait()  # swallowed: it never arrives
                    break
                if from_client and self.before_request is not None:
                    hook, self.before_request = self.before_request, None
                    hook()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def freeze(self) -> None:
        self._frozen.set()

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def __enter__(self) -> "TcpRelay":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
