"""The transport under prometheus-api-client: no retries, no redirects, every answer bounded in time and bytes.

``timeout`` bounds each query's *whole* answer: a :class:`Guard` shuts the connection's sockets
down when the deadline passes, so a server that trickles one byte a second cannot hold a look.
:class:`GuardedAdapter` watches every connection it opens (direct or through an HTTP proxy) and
refuses an answer whose declared length, or whose body as read (after decompression, chunk by
chunk), passes the byte cap. :class:`NoRedirectSession` makes one query one request.
"""

from __future__ import annotations

import socket
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

from controller.edges.prometheus.errors import AnswerTooLarge

_CHUNK = 64 * 1024


# --- the deadline watchdog --------------------------------------------------------------------


class Guard:
    """Shuts down a client's sockets when a deadline passes, so that the deadline bounds a whole answer.

    A socket timeout restarts with every byte received; ``shutdown()`` wakes a read blocked in any
    thread at once (the read sees end-of-file or an error), whatever the server does.
    """

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._generation = 0  # which arming a timer belongs to: a late timer of a finished one does nothing
        self.fired = False

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            if self.fired:
                _shutdown(sock)

    def fire(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self.fired = True
            for sock in list(self._sockets):
                _shutdown(sock)

    @contextmanager
    def armed(self, seconds: float) -> Iterator[None]:
        """Fire after ``seconds`` unless the block ends first; ``fired`` says whether it did."""
        with self._lock:
            self._generation += 1
            self.fired = False
            generation = self._generation
        timer = threading.Timer(max(seconds, 0.0), self.fire, args=(generation,))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            with self._lock:
                self._generation += 1


def _shutdown(sock: socket.socket) -> None:
    with suppress(OSError):  # already closed
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, also under TLS


def _pool_classes(guard: Guard) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose new sockets ``guard`` can shut down."""

    class Connection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            guard.track(sock)
            return sock

    class TLSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            guard.track(sock)
            return sock

    class Pool(HTTPConnectionPool):
        ConnectionCls = Connection

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = TLSConnection

    return {"http": Pool, "https": TLSPool}


def _over(limit: int, url: str) -> AnswerTooLarge:
    return AnswerTooLarge(
        f"the answer from {url} is over the {limit:,} byte limit (max_answer_bytes): the query selects "
        "too many series (e.g. a histogram with too many buckets, or too many pods)",
        limit=limit,
    )


class _CappedBody:
    """A urllib3 response whose body, as read (decompressed), may not pass ``limit`` bytes.

    ``requests`` reads a body through ``stream()`` (``Response.content`` does, for a library that
    does not stream); past the limit this raises :class:`AnswerTooLarge`, which ``requests`` does
    not wrap (it wraps only urllib3's own errors), and drops the connection, its body unread.
    Everything else is the wrapped response's.
    """

    def __init__(self, raw: Any, limit: int, url: str) -> None:
        self._raw = raw
        self._limit = limit
        self._url = url
        self._size = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def _count(self, chunk: bytes) -> bytes:
        self._size += len(chunk)
        if self._size > self._limit:
            self._raw.close()  # not back to the pool: the rest of the body is still on the wire
            raise _over(self._limit, self._url)
        return chunk

    def stream(self, amt: int | None = _CHUNK, decode_content: bool | None = None) -> Iterator[bytes]:
        for chunk in self._raw.stream(amt, decode_content=decode_content):
            yield self._count(chunk)

    def read(self, amt: int | None = None, decode_content: bool | None = None, cache_content: bool = False) -> bytes:
        if amt is None:  # all of it, still counted chunk by chunk
            return b"".join(self.stream(_CHUNK, decode_content=decode_content))
        return self._count(self._raw.read(amt, decode_content=decode_content, cache_content=cache_content))


class GuardedAdapter(HTTPAdapter):
    """The transport under the library: no retries, connections (direct or through an HTTP proxy)
    that ``guard`` watches, and bodies capped at ``limit`` bytes."""

    def __init__(self, guard: Guard, limit: int) -> None:
        self._classes = _pool_classes(guard)
        self._limit = limit
        super().__init__(max_retries=Retry(total=0, redirect=0, status_forcelist=()))

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        """The response with its body capped; an answer that declares a longer body is refused unread."""
        response = super().build_response(req, resp)
        url = (response.url or "").split("?", 1)[0]
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._limit:
            resp.close()
            raise _over(self._limit, url)
        response.raw = _CappedBody(resp, self._limit, url)
        # The API speaks UTF-8 JSON: no guessing of a charset over the whole body, outside any deadline.
        response.encoding = "utf-8"
        return response

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = self._classes

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = self._classes
        return manager


def is_timeout(exc: BaseException) -> bool:
    """Whether a client error is a timeout, by the types in its chain (never by its text)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, urllib3.exceptions.NewConnectionError):  # a ConnectTimeoutError subclass, for history
            pass
        elif isinstance(e, requests.exceptions.Timeout | urllib3.exceptions.TimeoutError | TimeoutError):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return False


class NoRedirectSession(requests.Session):
    """A session that follows no redirect: one query is one request, and credentials go nowhere else.

    A redirect comes back as the answer it is (the library refuses it as a non-200 answer).
    """

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None
