"""The operations HTTP server of a canarist process (the controller's, the GPU agent's): a few GET pages.

Each page is a function answering (status, body, content type) at the time of the request. A
client that sends nothing for ``socket_timeout`` seconds, or whose connection is still open after
``deadline`` seconds however it trickles, is dropped, so slow clients cannot pile up threads.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: A page: (HTTP status, body, content type), computed per request.
Page = Callable[[], tuple[int, bytes, str]]


def serve_pages(
    pages: Mapping[str, Page], port: int, host: str, *, name: str, socket_timeout: float, deadline: float
) -> ThreadingHTTPServer:
    """Serve ``pages`` (path -> page; others are 404) on ``host``:``port`` in a daemon thread named ``name``;
    the caller shuts it down. Raises OSError when the address cannot be bound."""

    class Handler(BaseHTTPRequestHandler):
        timeout = socket_timeout  # the socket's timeout: a silent client is dropped

        def setup(self) -> None:
            super().setup()
            self._deadline = threading.Timer(deadline, self._cut)
            self._deadline.daemon = True
            self._deadline.start()

        def finish(self) -> None:
            self._deadline.cancel()
            super().finish()

        def _cut(self) -> None:
            """The connection outlived its deadline (a trickling client): end it."""
            with contextlib.suppress(OSError):  # closed meanwhile
                self.connection.shutdown(socket.SHUT_RDWR)

        def do_GET(self) -> None:
            page = pages.get(self.path)
            code, body, content_type = page() if page is not None else (404, b"not found\n", "text/plain")
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET  # "::" for dual-stack pods
        daemon_threads = True

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
