"""A seeded fault proxy in front of a real Prometheus: what a flaky network or a sick server does to a query.

:class:`PrometheusProxy` is a small threaded HTTP proxy. Each query (``/api/v1/query`` and
``/api/v1/query_range``; other paths pass through) draws, from its :class:`ProxySchedule`'s own
``random.Random(seed)``, whether to get a fault and which. What each kind does, as the client sees it:

- ``delay``: the real answer, :attr:`ProxySchedule.delay` seconds late (within the client's timeout);
- ``timeout``: no answer at all until after the client's timeout, then the connection closes;
- ``5xx``: HTTP 500, 502 or 503 with Prometheus' error JSON, nothing asked upstream;
- ``cut-body``: the real answer's headers promise its whole length, half the body comes, the
  connection closes (a JSON document cut mid-way);
- ``nan`` / ``inf`` / ``neg-inf``: the real answer with one sample's value replaced by ``"NaN"``,
  ``"+Inf"`` or ``"-Inf"`` (injected only when the answer has a sample to replace);
- ``empty``: ``{"status": "success"}`` with an empty result (injected only when the real one is not);
- ``stale``: an answer for another time: the one this proxy gave earlier to the same query (path and
  PromQL) at other times, else the real answer with its times moved :attr:`ProxySchedule.stale_by`
  seconds back.

An applicable kind not injected yet goes first, so even a short run meets every kind.
:attr:`ProxySchedule.injected` counts what was really done, by kind. Thread-safe.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

QUERY_PATHS = ("/api/v1/query", "/api/v1/query_range")


class ProxyFault(StrEnum):
    DELAY = "delay"
    TIMEOUT = "timeout"
    ERROR_5XX = "5xx"
    CUT_BODY = "cut-body"
    NAN = "nan"
    POS_INF = "inf"
    NEG_INF = "neg-inf"
    EMPTY = "empty"
    STALE = "stale"


#: The sample value each substituting kind puts into an answer.
SUBSTITUTES = {ProxyFault.NAN: "NaN", ProxyFault.POS_INF: "+Inf", ProxyFault.NEG_INF: "-Inf"}
#: Timeouts cost real seconds, so they are rarer.
DEFAULT_WEIGHTS: dict[ProxyFault, float] = {kind: 1.0 for kind in ProxyFault} | {ProxyFault.TIMEOUT: 0.5}


@dataclass
class ProxySchedule:
    """Faults drawn per query from ``random.Random(seed)``: with probability ``rate`` a query gets one,
    of a kind drawn by ``weights``; a kind not injected yet goes first (see the module docstring).

    ``client_timeout``: the client's deadline per query (a ``timeout`` waits a little longer)."""

    seed: int
    rate: float = 0.2
    client_timeout: float = 1.0
    delay: float = 0.2
    stale_by: float = 60.0
    weights: dict[ProxyFault, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    injected: Counter[str] = field(default_factory=Counter)
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"prometheus-proxy-{self.seed}")  # not the API schedule's draws

    def draw(self) -> tuple[ProxyFault | None, random.Random]:
        """This query's fault (None: none), and a generator seeded from the schedule for its details."""
        kinds = [k for k in ProxyFault if self.weights.get(k, 0.0) > 0]
        with self._lock:
            fault: ProxyFault | None = None
            if kinds and self._rng.random() < self.rate:
                uncovered = [k for k in kinds if not self.injected[k.value]]
                fault = uncovered[0] if uncovered else self._rng.choices(kinds, [self.weights[k] for k in kinds])[0]
            return fault, random.Random(self._rng.getrandbits(64))

    def count(self, fault: ProxyFault) -> None:
        with self._lock:
            self.injected[fault.value] += 1


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


class PrometheusProxy(ThreadingHTTPServer):
    """The proxy on a free loopback port in front of ``upstream`` (``http://host:port``); see the module docstring."""

    daemon_threads = True

    def __init__(self, upstream: str, schedule: ProxySchedule) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.schedule = schedule
        #: The last answer given per (path, PromQL), with the query string it answered.
        self.given: dict[tuple[str, str], tuple[str, Answer]] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def ask(self, method: str, path: str, query: str, body: bytes | None, content_type: str | None) -> Answer:
        """The upstream's answer, uncompressed (so that a fault can edit it)."""
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            headers = {"Accept-Encoding": "identity"} | ({"Content-Type": content_type} if content_type else {})
            connection.request(method, f"{path}?{query}" if query else path, body=body, headers=headers)
            response = connection.getresponse()
            return Answer(response.status, response.getheader("Content-Type", "application/json"), response.read())
        finally:
            connection.close()


class _Handler(BaseHTTPRequestHandler):
    server: PrometheusProxy

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a soak asks thousands of queries."""

    def do_GET(self) -> None:
        self._serve(None)

    def do_POST(self) -> None:
        self._serve(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _serve(self, body: bytes | None) -> None:
        proxy, schedule = self.server, self.server.schedule
        path, _, query = self.path.partition("?")
        content_type = self.headers.get("Content-Type")
        if path not in QUERY_PATHS:
            self._send(proxy.ask(self.command, path, query, body, content_type))
            return
        fault, rng = schedule.draw()
        form = parse_qsl(body.decode() if body else query, keep_blank_values=True)
        key = (path, dict(form).get("query", ""))
        if fault is ProxyFault.TIMEOUT:
            schedule.count(fault)
            time.sleep(schedule.client_timeout + 0.2)
            self.close_connection = True  # no answer: the client gave up already
            return
        if fault is ProxyFault.ERROR_5XX:
            schedule.count(fault)
            error = {"status": "error", "errorType": "unavailable", "error": "injected by the chaos proxy"}
            self._send(Answer(rng.choice((500, 502, 503)), "application/json", json.dumps(error).encode()))
            return
        if fault is ProxyFault.DELAY:
            time.sleep(schedule.delay)
            schedule.count(fault)
        if fault is ProxyFault.STALE:
            answer = self._stale(key, path, form, body is not None, content_type)
            schedule.count(fault)
            self._send(answer)
            return
        answer = proxy.ask(self.command, path, query, body, content_type)
        if answer.status == 200:
            with proxy.lock:
                proxy.given[key] = (body.decode() if body else query, answer)
        if fault is ProxyFault.CUT_BODY:
            schedule.count(fault)
            self._send(answer, cut=True)
            return
        if fault in SUBSTITUTES or fault is ProxyFault.EMPTY:
            edited = _edit(answer, fault, rng)
            if edited is not None:
                schedule.count(fault)
                answer = edited
        self._send(answer)

    def _stale(
        self, key: tuple[str, str], path: str, form: list[tuple[str, str]], post: bool, content_type: str | None
    ) -> Answer:
        """The answer given earlier to this PromQL at other times, else a real one for earlier times."""
        proxy = self.server
        asked = urlencode(form)
        with proxy.lock:
            earlier = proxy.given.get(key)
        if earlier is not None and earlier[0] != asked:
            return earlier[1]
        by = proxy.schedule.stale_by
        moved = urlencode([(k, f"{float(v) - by:.3f}" if k in ("time", "start", "end") else v) for k, v in form])
        if post:
            return proxy.ask("POST", path, "", moved.encode(), content_type)
        return proxy.ask("GET", path, moved, None, None)

    def _send(self, answer: Answer, *, cut: bool = False) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body[: len(answer.body) // 2] if cut else answer.body)
        if cut:
            self.wfile.flush()
            self.close_connection = True


def _edit(answer: Answer, fault: ProxyFault, rng: random.Random) -> Answer | None:
    """The answer with ``fault``'s edit, or None when there is nothing to edit (an error, no sample)."""
    try:
        document = json.loads(answer.body)
        result = document["data"]["result"]
    except (ValueError, KeyError, TypeError):
        return None
    if answer.status != 200 or not isinstance(result, list) or not result:
        return None
    if fault is ProxyFault.EMPTY:
        document["data"]["result"] = []
    else:
        points = [p for series in result for p in ([series["value"]] if "value" in series else series["values"])]
        if not points:
            return None
        rng.choice(points)[1] = SUBSTITUTES[fault]
    return Answer(answer.status, answer.content_type, json.dumps(document).encode())


@contextmanager
def prometheus_proxy(upstream: str, schedule: ProxySchedule) -> Iterator[PrometheusProxy]:
    """The proxy serving in a thread for the block, then shut down."""
    proxy = PrometheusProxy(upstream, schedule)
    thread = threading.Thread(target=proxy.serve_forever, name="prometheus-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=5)
