"""Hostile HTTP servers on loopback for the Prometheus edge's bounds: a real socket, a thread per client.

Each behaviour reads the request, then misbehaves in one way a broken or malicious Prometheus (or
a proxy in front of it) can: trickle the body or the headers a byte at a time, never answer, or
send a body that never ends. The server stops (and closes every connection) on ``__exit__``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

Behaviour = Callable[[socket.socket, threading.Event], None]

HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
VALID = b'{"status":"success","data":{"resultType":"vector","result":[]}}'


def _drip(conn: socket.socket, stop: threading.Event, data: bytes, every: float) -> None:
    for i in range(len(data)):
        if stop.wait(every):
            return
        conn.sendall(data[i : i + 1])
    stop.wait()


def trickle_body(conn: socket.socket, stop: threading.Event) -> None:
    """Headers at once (with the body's true length), then the body one byte per second."""
    conn.sendall(HEADERS + f"Content-Length: {len(VALID)}\r\n\r\n".encode())
    _drip(conn, stop, VALID, 1.0)


def trickle_headers(conn: socket.socket, stop: threading.Event) -> None:
    """The status line and headers one byte per second."""
    _drip(conn, stop, HEADERS + f"Content-Length: {len(VALID)}\r\n\r\n".encode() + VALID, 1.0)


def trickle_chunked(conn: socket.socket, stop: threading.Event) -> None:
    """A chunked body, one one-byte chunk per second."""
    conn.sendall(HEADERS + b"Transfer-Encoding: chunked\r\n\r\n")
    for i in range(len(VALID)):
        if stop.wait(1.0):
            return
        conn.sendall(b"1\r\n" + VALID[i : i + 1] + b"\r\n")


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Accept, read the request, never answer."""
    stop.wait()


def endless_body(conn: socket.socket, stop: threading.Event) -> None:
    """A body without a length that never ends, as fast as the client reads it."""
    conn.sendall(HEADERS + b"\r\n" + b'{"status":"success","data":{"resultType":"vector","result":[')
    item = b'{"metric":{"le":"0.1"},"value":[1,"1"]},' * 1000
    while not stop.is_set():
        conn.sendall(item)


def slow_endless_body(conn: socket.socket, stop: threading.Event) -> None:
    """A body without a length that never ends, 1 KB every 0.1 s: small, but never done."""
    conn.sendall(HEADERS + b"\r\n" + b'{"status":"success","data":{"resultType":"vector","result":[')
    while not stop.wait(0.1):
        conn.sendall(b" " * 1024)


def oversized(conn: socket.socket, stop: threading.Event) -> None:
    """A complete, valid answer of about 20 MiB (declared length): too many series."""
    item = b'{"metric":{"le":"0.1","version":"v1"},"value":[1,"1"]},'
    count = 20 * 2**20 // len(item)
    body = (
        b'{"status":"success","data":{"resultType":"vector","result":['
        + item * count
        + b'{"metric":{},"value":[1,"1"]}]}}'
    )
    conn.sendall(HEADERS + f"Content-Length: {len(body)}\r\n\r\n".encode())
    conn.sendall(body)
    stop.wait()


BEHAVIOURS: dict[str, Behaviour] = {
    "trickle-body": trickle_body,
    "trickle-headers": trickle_headers,
    "trickle-chunked": trickle_chunked,
    "silent": silent,
    "endless-body": endless_body,
    "slow-endless-body": slow_endless_body,
    "oversized": oversized,
}


class HostileServer:
    """A loopback HTTP server that answers every request with ``behaviour``."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.connections: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def __enter__(self) -> HostileServer:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *args: Any) -> None:
        self.stop.set()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.listener.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5.0)
            request = b""
            while b"\r\n\r\n" not in request:
                got = conn.recv(4096)
                if not got:
                    return
                request += got
            self.behaviour(conn, self.stop)
        except OSError:
            return  # the client gave up: what it should do
