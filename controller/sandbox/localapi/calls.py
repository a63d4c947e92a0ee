"""A request as the local API stand-in sees it: who made it, the record the log keeps, a fault to inject.

:class:`Caller` is who the server authenticated a request as, :class:`Request` one entry of the
server's ``log``, :class:`Fault` what ``LocalApiServer.fail`` injects into the next matching requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
