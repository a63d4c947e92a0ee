"""A request as the local API stand-in sees it: who made it, the record the log keeps, a fault to inject.

:class:`Caller` is who the server authenticated a request as, :class:`Request` one entry of the
server's ``log``, :class:`Fault` what ``LocalApiServer.fail`` injects into the next matching requests.
:class:`RequestFilter` is the hook a fault schedule plugs in (``LocalApiServer.request_filter``): it
sees every request and may answer it with an :class:`Injection`; :data:`WriteObserver` the hook that
sees every write the store accepts (``LocalApiServer.write_observer``). Both are off (None) by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: Who a request without credentials is (anonymous authentication is on, as by default).
ANONYMOUS = "system:anonymous"


@dataclass(frozen=True)
class Caller:
    """Who the server authenticated a request as, and the field manager its writes are recorded under."""

    user: str = ANONYMOUS
    manager: str = "unknown"

    @property
    def groups(self) -> list[str]:
        return ["system:unauthenticated"] if self.user == ANONYMOUS else ["system:authenticated"]


@dataclass
class Request:
    """One request as the fake saw it; ``code`` is what it answered."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    code: int = 0
    user: str = ANONYMOUS  # who the server authenticated the request as


@dataclass
class Fault:
    match: str  # a substring of the request path
    method: str | None
    code: int | None
    times: int
    delay: float
    retry_after: int | None


@dataclass(frozen=True)
class Injection:
    """What a :class:`RequestFilter` does to one request, in this order: wait ``delay`` seconds; then
    answer ``code`` (with ``Retry-After`` when given) without serving the request; else serve it
    unless ``serve`` is False; then close the connection without an answer unless ``answer``.
    ``watch_end`` ends a watch at once: ``"drop"`` (the stream closes with no event) or
    ``"expire"`` (an ERROR event with a 410 Expired Status, as for a too old resourceVersion)."""

    kind: str
    delay: float = 0.0
    code: int | None = None
    retry_after: int | None = None
    serve: bool = True
    answer: bool = True
    watch_end: str | None = None


class RequestFilter(Protocol):
    """Consulted for every request before it is served; None lets it through untouched."""

    def __call__(self, method: str, path: str, query: dict[str, str]) -> Injection | None: ...


#: Called (with the store's lock held) for every write the store accepts: its resourceVersion, the
#: event type (ADDED, MODIFIED, DELETED), the object's key and the object as stored.
WriteObserver = Callable[[int, str, tuple[str, str, str, str], dict[str, Any]], None]
