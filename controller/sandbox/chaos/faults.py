"""A seeded, reproducible fault schedule for the local Kubernetes API stand-in.

:class:`FaultSchedule` is a :class:`~controller.sandbox.localapi.calls.RequestFilter`: plugged into
``LocalApiServer.request_filter``, it draws for each request, from its own ``random.Random(seed)``,
whether to answer it with a fault and which. The same seed and the same sequence of requests give
the same faults. What each kind does, as the client sees it:

- ``conflict``: 409 Conflict on an update or patch (the object "has been modified");
- ``error-500`` / ``unavailable-503``: the API server failing, nothing done;
- ``throttled-429``: 429 Too Many Requests with a ``Retry-After`` of 1-3 seconds;
- ``slow``: the answer comes :attr:`FaultSchedule.slow_delay` seconds late, otherwise normal;
- ``timeout``: no answer within the client's timeout; nothing is done;
- ``lost-answer``: a write is applied, but the connection closes before its answer;
- ``late-write``: a write is applied only after the client gave up waiting for it (its timeout),
  when the controller may have moved on;
- ``watch-dropped``: a watch closes at once with no event;
- ``watch-expired``: a watch gets a 410 Expired ERROR event ("too old resource version").
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from controller.sandbox.localapi.calls import Injection


class FaultKind(StrEnum):
    CONFLICT = "conflict"
    ERROR_500 = "error-500"
    UNAVAILABLE_503 = "unavailable-503"
    THROTTLED_429 = "throttled-429"
    SLOW = "slow"
    TIMEOUT = "timeout"
    LOST_ANSWER = "lost-answer"
    LATE_WRITE = "late-write"
    WATCH_DROPPED = "watch-dropped"
    WATCH_EXPIRED = "watch-expired"


#: How often each kind is drawn among the kinds a request may get: the kinds only writes get weigh
#: more (writes are few among the requests); timeouts cost real seconds, so they are rarer.
DEFAULT_WEIGHTS: dict[FaultKind, float] = {
    FaultKind.CONFLICT: 6.0,
    FaultKind.ERROR_500: 2.0,
    FaultKind.UNAVAILABLE_503: 2.0,
    FaultKind.THROTTLED_429: 2.0,
    FaultKind.SLOW: 2.0,
    FaultKind.TIMEOUT: 0.5,
    FaultKind.LOST_ANSWER: 6.0,
    FaultKind.LATE_WRITE: 1.0,
    FaultKind.WATCH_DROPPED: 1.0,
    FaultKind.WATCH_EXPIRED: 1.0,
}
WATCH_KINDS = (FaultKind.WATCH_DROPPED, FaultKind.WATCH_EXPIRED)
#: Kinds only a write may get: a conflict needs a version to compare, a lost answer something done.
WRITE_KINDS = (FaultKind.CONFLICT, FaultKind.LOST_ANSWER, FaultKind.LATE_WRITE)
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def applicable(method: str, query: dict[str, str]) -> tuple[FaultKind, ...]:
    """The kinds a request may get: a watch only its own; a conflict only on an update or patch."""
    if method == "GET" and query.get("watch") in ("true", "1"):
        return WATCH_KINDS
    kinds = [k for k in FaultKind if k not in WATCH_KINDS and k not in WRITE_KINDS]
    if method in WRITES:
        kinds += [FaultKind.LOST_ANSWER, FaultKind.LATE_WRITE]
    if method in ("PUT", "PATCH"):
        kinds.append(FaultKind.CONFLICT)
    return tuple(kinds)


@dataclass
class FaultSchedule:
    """Faults drawn per request from ``random.Random(seed)``: with probability ``rate`` (``watch_rate``
    for a watch) a request gets one, of a kind drawn by ``weights`` among the :func:`applicable` ones;
    an applicable kind not injected yet goes first, so even a short run meets every kind.

    ``client_timeout`` is the client's read timeout (a ``timeout`` waits a little longer);
    :attr:`injected` counts what was injected, by kind. Thread-safe: the server serves in threads."""

    seed: int
    rate: float = 0.05
    watch_rate: float = 0.5
    client_timeout: float = 0.5
    slow_delay: float = 0.05
    weights: dict[FaultKind, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    enabled: bool = True
    injected: Counter[str] = field(default_factory=Counter)
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def __call__(self, method: str, path: str, query: dict[str, str]) -> Injection | None:
        kinds = [k for k in applicable(method, query) if self.weights.get(k, 0.0) > 0]
        if not kinds:
            return None
        with self._lock:
            if not self.enabled:
                return None
            rate = self.watch_rate if kinds[0] in WATCH_KINDS else self.rate
            if self._rng.random() >= rate:
                return None
            uncovered = [k for k in kinds if not self.injected[k.value]]
            kind = uncovered[0] if uncovered else self._rng.choices(kinds, [self.weights[k] for k in kinds])[0]
            retry_after = self._rng.randint(1, 3)
            self.injected[kind.value] += 1
        return self.injection(kind, retry_after=retry_after)

    def injection(self, kind: FaultKind, *, retry_after: int = 1) -> Injection:
        """What ``kind`` does to a request (see the module docstring)."""
        match kind:
            case FaultKind.CONFLICT:
                return Injection(kind.value, code=409)
            case FaultKind.ERROR_500:
                return Injection(kind.value, code=500)
            case FaultKind.UNAVAILABLE_503:
                return Injection(kind.value, code=503)
            case FaultKind.THROTTLED_429:
                return Injection(kind.value, code=429, retry_after=retry_after)
            case FaultKind.SLOW:
                return Injection(kind.value, delay=self.slow_delay)
            case FaultKind.TIMEOUT:
                return Injection(kind.value, delay=self.client_timeout + 0.1, serve=False, answer=False)
            case FaultKind.LOST_ANSWER:
                return Injection(kind.value, answer=False)
            case FaultKind.LATE_WRITE:
                return Injection(kind.value, delay=self.client_timeout + 0.1, answer=False)
            case FaultKind.WATCH_DROPPED:
                return Injection(kind.value, watch_end="drop")
            case FaultKind.WATCH_EXPIRED:
                return Injection(kind.value, watch_end="expire")
