"""The HTTP side of the local API stand-in: one request in, one JSON answer or a watch stream out.

:class:`RequestHandler` decodes the body, authenticates the caller, applies an injected fault, then
hands the request to its :class:`~controller.sandbox.localapi.server.LocalApiServer` and writes the
answer (a ``kind: Status`` for an error), or streams a watch as chunked JSON lines; every request
is recorded in the server's log.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from controller.sandbox.localapi import discovery
from controller.sandbox.localapi.calls import Injection, Request
from controller.sandbox.localapi.documents import ApiError

if TYPE_CHECKING:
    from controller.sandbox.localapi.resources import Route
    from controller.sandbox.localapi.server import LocalApiServer


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one small answer must not wait for a delayed ACK

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _handle(self) -> None:
        method = self.command
        fake: LocalApiServer = self.server.fake  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        request = Request(method, url.path, query, None)
        headers: dict[str, str] = {}
        try:
            try:
                request.body = json.loads(raw) if raw else None
            except ValueError:
                raise ApiError(400, "the body of the request could not be decoded as JSON") from None
            caller = fake.authenticate(self.headers.get("Authorization"), self.headers.get("User-Agent"), query)
            request.user = caller.user
            injection = _injected(fake, method, url.path, query, headers)
            if injection is not None and not injection.serve:  # the client gave up waiting: nothing done or said
                self._unanswered(fake, request)
                return
            if method == "GET" and query.get("watch") in ("true", "1"):
                route = fake.route(url.path)
                request.code = 200
                fake.record(request)
                events = _ended(injection.watch_end) if injection and injection.watch_end else fake.watch(route, query)
                if discovery.wants_table(self.headers.get("Accept", "")):  # kubectl get -w: each object a Table row
                    events = _as_tables(route, events)
                self._stream(events)
                return
            content_type = self.headers.get("Content-Type", "")
            accept = self.headers.get("Accept", "")
            code, payload = fake.handle(
                method, url.path, query, request.body, content_type, caller=caller, accept=accept
            )
            if injection is not None and not injection.answer:  # done, but the answer is lost
                request.code = code
                self._unanswered(fake, request)
                return
        except ApiError as error:
            code, payload = error.code, error.status()
        request.code = code
        fake.record(request)
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up waiting
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815  (http.server's names)

    def _unanswered(self, fake: LocalApiServer, request: Request) -> None:
        """Record ``request`` and close the connection without a word (its ``code`` is what it would
        have answered, 0 when it was not served)."""
        fake.record(request)
        self.close_connection = True

    def _stream(self, events: Iterator[dict[str, Any]]) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        # Said, not only done: a client that pooled this connection would send its next request
        # into a socket we are closing (RemoteDisconnected), depending on who is faster.
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for event in events:
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


def _injected(
    fake: LocalApiServer, method: str, path: str, query: dict[str, str], headers: dict[str, str]
) -> Injection | None:
    """Play the faults for one request: a :meth:`LocalApiServer.fail` fault, then the request filter's
    injection (its delay and error answer here; the rest is the caller's). Raises the error answer."""
    fault = fake.take_fault(method, path)
    if fault is not None:
        time.sleep(fault.delay)
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        if fault.code is not None:
            raise ApiError(fault.code, f"injected fault: {fault.code}")
    injection = fake.request_filter(method, path, query) if fake.request_filter is not None else None
    if injection is not None:
        time.sleep(injection.delay)
        if injection.retry_after is not None:
            headers["Retry-After"] = str(injection.retry_after)
        if injection.code is not None:
            raise ApiError(injection.code, f"injected fault: {injection.kind}")
    return injection


def _as_tables(route: Route, events: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """A watch's events with each object as a one-row Table (errors and bookmarks as they are)."""
    for event in events:
        obj = event.get("object") or {}
        if event.get("type") in ("ADDED", "MODIFIED", "DELETED") and obj.get("kind") != "Status":
            version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
            yield {**event, "object": discovery.table(route.resource, [obj], resource_version=version)}
        else:
            yield event


def _ended(how: str) -> Iterator[dict[str, Any]]:
    """A watch that ends at once: dropped (no event), or expired (a 410 ERROR event)."""
    if how == "expire":
        yield {"type": "ERROR", "object": ApiError(410, "too old resource version (injected)").status()}
