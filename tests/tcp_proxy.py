"""A TCP proxy on 127.0.0.1 in front of a real server, which a test can turn hostile while a client uses it.

Modes: "forward" (a plain proxy); "silent" (new connections are accepted and never answered; bytes already
flowing stop flowing both ways, and once the mode changes back the connection is closed, what it held dropped);
"trickle" (each new connection's request is answered with HTTP headers and then a body one byte every
`trickle_s` seconds, forever; bytes already flowing stop, as when silent). Only the client side is hostile: the
server behind it is real.
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target_port: int | None = None, *, trickle_s: float = 2.0):
        self.target_port = target_port
        self.mode = "forward" if target_port else "silent"
        self.trickle_s = trickle_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            mode = self.mode
            if mode == "forward":
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                except OSError:
                    client.close()
                    continue
                self._sockets.append(upstream)
                threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
                threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
            elif mode == "trickle":
                threading.Thread(target=self._trickle, args=(client,), daemon=True).start()
            # silent: accepted, held open, never read nor answered

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                data = src.recv(65536)
                if not data:
                    break
                stalled = False
                while self.mode != "forward" and not self._closed.wait(
                    0.05
                ):  # stall the flow, keep the socket
                    stalled = True
                if stalled:
                    # what was cut off is never delivered: replaying a request its client gave up on long ago
                    # (an old trials.parquet after `hpo results sync` wrote the new one) is no endpoint's habit
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _trickle(self, client: socket.socket) -> None:
        try:
            client.recv(65536)  # the request's first bytes
            client.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
            )
            while not self._closed.wait(self.trickle_s):
                client.sendall(b"x")
        except OSError:
            pass

    def close(self) -> None:
        self._closed.set()
        for s in [self._listener, *self._sockets]:
            try:
                s.close()
            except OSError:
                pass
