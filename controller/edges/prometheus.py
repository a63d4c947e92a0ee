"""The Prometheus edge: PromQL over HTTP with prometheus-api-client, bounded in time and bytes, every failure typed.

The only module that imports ``prometheus_api_client`` and ``requests``. Queries go through the
library's ``PrometheusConnect.custom_query`` and ``custom_query_range``; the ``requests`` session
under it is ours, and its transport enforces the bounds (below), whoever calls it. The rest of
canarist sees :class:`PromQL`, two methods with explicit times, and exceptions that say whether
to retry:

* :class:`PrometheusUnavailable` (temporary, carries ``retry_after``): connection refused or
  reset, HTTP 429 and 5xx, and :class:`PrometheusTimeout`: no whole answer in time (client side:
  the query's or the look's deadline; or the server's own evaluation timeout).
* :class:`QueryError` (configuration): Prometheus refused the PromQL (HTTP 400 ``bad_data``,
  422 ``execution``), or answered with something other than a vector or matrix.
* :class:`AnswerTooLarge`: the answer is over ``max_answer_bytes`` (too many series, e.g. a
  histogram with thousands of buckets); retrying will not make it smaller.
* :class:`PrometheusConfigError` (configuration): credentials refused, wrong URL, TLS failure, an
  answer that is not the Prometheus API.

Bounds. ``timeout`` bounds each query's *whole* answer (connect, headers and body together), not
each read: a watchdog shuts the connection's socket down when the deadline passes, so a server
that trickles one byte a second cannot hold a look. A look (all queries of one :func:`observe`)
has its own total deadline, ``look_timeout``. The library reads each body whole, so the cap sits
under it: the transport refuses an answer whose declared length, or whose body as read (counted
after decompression, chunk by chunk), passes ``max_answer_bytes``. Not bounded: a DNS lookup that
hangs (the resolver's own timeouts apply), and SOCKS proxies (the watchdog cannot reach their
sockets).

Callers turn any of them into *no data* with the reason (:func:`observe_or_explain` does):
never a pass, never a canary failure. Empty results, NaN and Inf are data problems, judged per
window by :mod:`controller.metrics.read`. The client does not retry on its own (a retry is the next
tick's business) and follows no redirect, so one call is one HTTP request: ``requests_sent``
counts them.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import reduce
from itertools import pairwise
from math import gcd
from pathlib import Path
from typing import Any, Protocol

import requests
import urllib3.exceptions
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

from controller.api.model import ModelRollout
from controller.api.text import printable
from controller.metrics.promql import Labels, Query, plan, promql_duration, to_millis
from controller.metrics.read import Results, build_observations, no_data
from controller.metrics.samples import Observation, Window

Sample = tuple[dict[str, str], float]
Points = list[tuple[float, float]]
#: Prometheus refuses range queries of more than 11,000 points per series.
MAX_POINTS = 11_000
#: Default cap on one answer's body, after decompression (see :class:`PrometheusSettings`).
MAX_ANSWER_BYTES = 16 * 2**20
#: Default total deadline of one look, every query included (see :class:`PrometheusSettings`).
LOOK_TIMEOUT = 60.0
_CHUNK = 64 * 1024


class PromQL(Protocol):
    """What canarist needs from a metrics source: PromQL evaluated at explicit times."""

    def vector(self, query: str, at: float) -> list[Sample]:
        """The instant vector of ``query`` at ``at`` (Unix seconds)."""
        ...

    def matrix(self, query: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], Points]]:
        """``query`` evaluated at ``start``, ``start + step``, ... ``<= end``: per series its (time, value) points."""
        ...


class PrometheusError(Exception):
    """A look at Prometheus failed; ``retryable`` says whether the same request may succeed later."""

    retryable = False
    kind = "configuration error"  # how observe_or_explain labels the reason

    def __init__(self, reason: str, *, query: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.query = query


class PrometheusUnavailable(PrometheusError):  # noqa: N818 - the name says what the caller acts on
    """Temporary: Prometheus could not answer now. Retry after ``retry_after`` seconds."""

    retryable = True
    kind = "temporary"

    def __init__(self, reason: str, *, retry_after: float, query: str = "") -> None:
        super().__init__(reason, query=query)
        self.retry_after = retry_after


class PrometheusTimeout(PrometheusUnavailable):
    """Temporary: no whole answer before a deadline, ``seconds`` long.

    ``scope``: ``query`` (the per-query ``timeout``), ``look`` (the look's ``look_timeout``) or
    ``server`` (Prometheus gave up evaluating the query).
    """

    def __init__(self, reason: str, *, retry_after: float, scope: str, seconds: float, query: str = "") -> None:
        super().__init__(reason, retry_after=retry_after, query=query)
        self.scope = scope
        self.seconds = seconds


class QueryError(PrometheusError):
    """Configuration error: Prometheus refused the query itself. Retrying will not help."""


class AnswerTooLarge(PrometheusError):  # noqa: N818 - the name says what happened
    """The answer is over ``limit`` bytes: the query selects too many series. Retrying will not help."""

    kind = "answer too large"

    def __init__(self, reason: str, *, limit: int, query: str = "") -> None:
        super().__init__(reason, query=query)
        self.limit = limit


class PrometheusConfigError(PrometheusError):
    """Configuration error: wrong URL, refused credentials, TLS failure. Retrying will not help."""


@dataclass(frozen=True)
class PrometheusSettings:
    """Where Prometheus is and how to talk to it.

    ``timeout`` bounds each query's whole answer (connect, headers, body) on the client, and the
    evaluation on the server. ``look_timeout`` bounds all queries of one look together.
    ``max_answer_bytes`` refuses an answer whose body (decompressed) is larger.
    Authentication: ``bearer_token`` (or ``bearer_token_file``, read once, e.g. a service account
    token) or ``basic_auth``. TLS: ``ca_file`` to trust a private CA, ``client_cert`` as
    (certificate file, key file), ``insecure`` to skip verification (tests only).
    """

    url: str
    timeout: float = 10.0
    bearer_token: str | None = field(default=None, repr=False)  # secrets stay out of logs
    bearer_token_file: str | None = None
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    ca_file: str | None = None
    insecure: bool = False
    client_cert: tuple[str, str] | None = None
    retry_after: float = 15.0
    look_timeout: float = LOOK_TIMEOUT
    max_answer_bytes: int = MAX_ANSWER_BYTES

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise PrometheusConfigError(f"Prometheus URL must start with http:// or https://, got {self.url!r}")
        for name in ("timeout", "look_timeout"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value > 0)
            ):
                raise PrometheusConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if isinstance(self.max_answer_bytes, bool) or not isinstance(self.max_answer_bytes, int):
            raise PrometheusConfigError(f"max_answer_bytes must be a whole number, got {self.max_answer_bytes!r}")
        if self.max_answer_bytes < 1024:
            raise PrometheusConfigError(f"max_answer_bytes must be at least 1024, got {self.max_answer_bytes}")
        if self.bearer_token is not None and self.bearer_token_file is not None:
            raise PrometheusConfigError("give a bearer token or a bearer token file, not both")
        if (self.bearer_token or self.bearer_token_file) and self.basic_auth is not None:
            raise PrometheusConfigError("give bearer token or basic auth, not both")


# --- the deadline watchdog --------------------------------------------------------------------


class _Guard:
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


def _pool_classes(guard: _Guard) -> dict[str, type[HTTPConnectionPool]]:
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


class _GuardedAdapter(HTTPAdapter):
    """The transport under the library: no retries, connections (direct or through an HTTP proxy)
    that ``guard`` watches, and bodies capped at ``limit`` bytes."""

    def __init__(self, guard: _Guard, limit: int) -> None:
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


def _is_timeout(exc: BaseException) -> bool:
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


# --- the client -------------------------------------------------------------------------------


class _Session(requests.Session):
    """A session that follows no redirect: one query is one request, and credentials go nowhere else.

    A redirect comes back as the answer it is (the library refuses it as a non-200 answer).
    """

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None


class PrometheusClient:
    """:class:`PromQL` over HTTP, through prometheus-api-client. Not thread-safe: one client per thread."""

    def __init__(self, settings: PrometheusSettings) -> None:
        self.settings = settings
        self.requests_sent = 0
        self._guard = _Guard()
        self._deadline: float | None = None  # monotonic end of the current look, if any
        self._last: requests.Response | None = None  # the current query's answer, for its status and headers
        session = _Session()
        session.verify = False if settings.insecure else (settings.ca_file or True)
        if settings.client_cert is not None:
            session.cert = settings.client_cert
        if settings.basic_auth is not None:
            session.auth = settings.basic_auth
        token = settings.bearer_token
        if settings.bearer_token_file is not None:
            try:
                token = Path(settings.bearer_token_file).read_text().strip()
            except OSError as exc:
                raise PrometheusConfigError(f"cannot read the bearer token file: {exc}") from None
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        session.hooks["response"].append(self._remember)
        self._url = settings.url.rstrip("/")
        options: dict[str, Any] = {
            "url": self._url,
            "retry": Retry(total=0, redirect=0, status_forcelist=()),  # no retries: a retry is the next tick's
            "session": session,
            "timeout": (settings.timeout, settings.timeout),  # each call passes its own; typed int, handed to requests
        }
        self._connect = PrometheusConnect(**options)
        # The library mounts an adapter of its own on the URL; ours replaces it, so that the bounds hold.
        adapter = _GuardedAdapter(self._guard, settings.max_answer_bytes)
        for prefix in ("http://", "https://", self._url):
            replaced = session.adapters.get(prefix)
            session.mount(prefix, adapter)
            if replaced is not None and replaced is not adapter:
                replaced.close()
        if session.get_adapter(f"{self._url}/api/v1/query") is not adapter:
            raise RuntimeError("prometheus-api-client mounted a transport the bounds do not cover")

    def _remember(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._last = response

    def close(self) -> None:
        self._connect.close()

    @contextmanager
    def deadline(self, at: float) -> Iterator[None]:
        """Within the block, no query runs past ``at`` (``time.monotonic()``): the look's deadline."""
        before = self._deadline
        self._deadline = at if before is None else min(at, before)
        try:
            yield
        finally:
            self._deadline = before

    def vector(self, query: str, at: float) -> list[Sample]:
        params = {"time": _seconds(at), "timeout": promql_duration(self.settings.timeout)}
        # timeout: (connect, read) seconds; typed int in the library, which hands it to requests as is
        data = self._call(
            query,
            lambda timeout: self._connect.custom_query(query, params=params, timeout=timeout),  # type: ignore[arg-type]
        )
        if not all(isinstance(item, dict) and "value" in item for item in data):
            raise QueryError("the query did not return an instant vector", query=query)
        return [(dict(item.get("metric", {})), _number(item["value"][1], query)) for item in data]

    def matrix(self, query: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], Points]]:
        # The library rounds start and end to whole seconds; these params override them, exact to the millisecond.
        params = {
            "start": _seconds(start),
            "end": _seconds(end),
            "step": _seconds(step),
            "timeout": promql_duration(self.settings.timeout),
        }
        first, last = datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
        data = self._call(
            query,
            lambda timeout: self._connect.custom_query_range(
                query,
                first,
                last,
                params["step"],
                params=params,
                timeout=timeout,  # type: ignore[arg-type]
            ),
        )
        if not all(isinstance(item, dict) and "values" in item for item in data):
            raise QueryError("the query did not return a range vector", query=query)
        return [
            (dict(item.get("metric", {})), [(float(t), _number(v, query)) for t, v in item["values"]]) for item in data
        ]

    def _budget(self, query: str) -> tuple[float, str]:
        """Seconds this query may take, and which deadline sets them (``query`` or ``look``)."""
        budget, scope = self.settings.timeout, "query"
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise self._timeout("look", self.settings.look_timeout, query)
            if left < budget:
                budget, scope = left, "look"
        return budget, scope

    def _call(self, query: str, ask: Callable[[tuple[float, float]], Any]) -> list[Any]:
        """One library call (one HTTP request) under the query's deadline; every failure typed.

        Failures are told apart by their types, never their text: the deadline first (an answer cut
        short by it may fail in any way), then the cap, the library's non-200 refusal (classified by
        the answer the session hook kept), an answer that is not the API, and the transport's errors.
        """
        budget, scope = self._budget(query)
        self.requests_sent += 1
        self._last = None
        caught: Exception | None = None
        data: Any = None
        with self._guard.armed(budget):
            try:
                data = ask((budget, budget))
            except Exception as exc:  # classified below, once we know whether the deadline fired
                caught = exc
        if isinstance(caught, AnswerTooLarge):
            raise self._too_large(query) from None
        if self._guard.fired or (caught is not None and _is_timeout(caught)):
            seconds = self.settings.look_timeout if scope == "look" else self.settings.timeout
            raise self._timeout(scope, seconds, query) from None
        answer, self._last = self._last, None  # not kept past the call: it holds a whole body
        if isinstance(caught, PrometheusApiClientException):
            if answer is None:  # the library refuses only answers it got; kept by the hook
                raise PrometheusConfigError(f"unexpected answer from {self._url}", query=query) from None
            raise self._http_error(answer.status_code, answer.content, answer.headers, query) from None
        if _not_the_api(caught, answer):
            raise PrometheusConfigError(
                f"{self._url} did not answer as the Prometheus HTTP API (is the URL right?)", query=query
            ) from None
        if caught is not None:
            raise self._classify(caught, query) from None
        if not isinstance(data, list):
            raise QueryError("the query did not return a vector", query=query)
        return data

    def _too_large(self, query: str) -> AnswerTooLarge:
        limit = self.settings.max_answer_bytes
        return AnswerTooLarge(
            f"the answer from {self._url} is over the {limit:,} byte limit (max_answer_bytes): the query selects "
            "too many series (e.g. a histogram with too many buckets, or too many pods)",
            limit=limit,
            query=query,
        )

    def _timeout(self, scope: str, seconds: float, query: str) -> PrometheusTimeout:
        what = "no whole answer to a query" if scope == "query" else "the look's deadline passed"
        return PrometheusTimeout(
            f"Prometheus at {self._url} unavailable: timed out after {seconds:g}s ({what})",
            retry_after=self.settings.retry_after,
            scope=scope,
            seconds=seconds,
            query=query,
        )

    def _classify(self, exc: Exception, query: str) -> PrometheusError:
        """A client-side failure that is not a timeout, by its type."""
        if isinstance(exc, requests.exceptions.SSLError):
            return PrometheusConfigError(f"TLS failure talking to {self._url}: {_short(exc)}", query=query)
        if isinstance(
            exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema | requests.exceptions.InvalidSchema
        ):
            return PrometheusConfigError(f"invalid Prometheus URL {self._url!r}", query=query)
        if isinstance(exc, requests.exceptions.ConnectionError):
            return self._unavailable(f"connection failed: {_cause(exc)}", query)
        if isinstance(exc, requests.exceptions.RequestException | urllib3.exceptions.HTTPError | OSError):
            return self._unavailable(f"request failed: {_short(exc)}", query)
        raise exc  # a bug of ours, not a Prometheus failure

    def _unavailable(self, why: str, query: str, retry_after: float | None = None) -> PrometheusUnavailable:
        delay = self.settings.retry_after if retry_after is None else retry_after
        return PrometheusUnavailable(f"Prometheus at {self._url} unavailable: {why}", retry_after=delay, query=query)

    def _http_error(self, status: int, body: bytes, headers: Mapping[str, str], query: str) -> PrometheusError:
        """Classify a non-200 answer by its status and the API's ``errorType``."""
        try:
            doc = json.loads(body)
            kind, error = printable(str(doc.get("errorType", "")), 64), printable(str(doc.get("error", "")), 512)
        except (ValueError, AttributeError, RecursionError):
            kind, error = "", printable(body[:200].decode("utf-8", "replace"), 200)
        detail = f"HTTP {status}" + (f" {kind}" if kind else "") + (f": {error}" if error else "")
        if status in (400, 422):
            return QueryError(f"Prometheus refused the query ({detail})", query=query)
        if status in (401, 403):
            return PrometheusConfigError(f"Prometheus refused the credentials ({detail})", query=query)
        if status == 429 or status >= 500:
            delay = _retry_after(headers)
            if kind == "timeout":
                return PrometheusTimeout(
                    f"Prometheus at {self._url} unavailable: query timed out on the server ({detail})",
                    retry_after=self.settings.retry_after if delay is None else delay,
                    scope="server",
                    seconds=self.settings.timeout,
                    query=query,
                )
            return self._unavailable(detail, query, delay)
        return PrometheusConfigError(f"unexpected answer from {self._url} ({detail})", query=query)


def _not_the_api(exc: Exception | None, answer: requests.Response | None) -> bool:
    """Whether the library failed on a 200 answer that is not the API's JSON ``{"data": {"result": ...}}``."""
    if answer is None or answer.status_code != 200:
        return False
    # not JSON; nested too deep to parse; JSON without data.result (the library indexes it)
    return isinstance(exc, requests.exceptions.JSONDecodeError | RecursionError | KeyError | TypeError)


def _seconds(value: float) -> str:
    return f"{to_millis(value) / 1000:.3f}"


def _number(text: Any, query: str) -> float:
    try:
        return float(text)  # "NaN", "+Inf" and "-Inf" included: judged per window later
    except (TypeError, ValueError):
        raise QueryError(f"Prometheus returned a non-numeric sample value {text!r}", query=query) from None


def _cause(exc: BaseException) -> str:
    """The operating system's words for a failed connection (e.g. "Connection refused"), else the error's."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e).__module__ in ("builtins", "socket") and isinstance(e, OSError):
            return f"{type(e).__name__}: {e.strerror or e}"
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return _short(exc)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        value = float(headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


# --- composing catalog and edge ---------------------------------------------------------------


def grid_step(times_ms: Sequence[int]) -> int | None:
    """The step of a range query that hits every time in ``times_ms``, if one is cheap enough."""
    if len(times_ms) < 2:
        return None
    step = reduce(gcd, (b - a for a, b in pairwise(times_ms)))
    points = (times_ms[-1] - times_ms[0]) // step + 1
    return step if points <= min(MAX_POINTS, 16 * len(times_ms)) else None


def fetch(
    source: PromQL, queries: Sequence[Query], *, deadline: float | None = None, look_timeout: float | None = None
) -> Results:
    """Run every query: one range query when its times lie on a cheap grid, else one instant query per time.

    Stops at the first failure (raising it): when Prometheus is down, one timeout is enough. With a
    ``deadline`` (``time.monotonic()``), no query starts after it (:class:`PrometheusTimeout`, scope
    ``look``); a :class:`PrometheusClient` also cuts the query running at the deadline short.
    ``look_timeout`` (seconds) is only for the message.
    """
    results: dict[tuple[str, int], list[tuple[Mapping[str, str], float]]] = {}
    for done, query in enumerate(queries):
        if deadline is not None and time.monotonic() >= deadline:
            after = f" after {look_timeout:g}s" if look_timeout is not None else ""
            raise PrometheusTimeout(
                f"Prometheus unavailable: timed out{after} (the look's deadline passed, "
                f"{done} of {len(queries)} queries answered)",
                retry_after=0.0,
                scope="look",
                seconds=look_timeout or 0.0,
                query=query.promql,
            )
        times = sorted({to_millis(t) for t in query.times})
        step = grid_step(times)
        if step is None:
            for t in times:
                results[(query.promql, t)] = list(source.vector(query.promql, t / 1000))
            continue
        wanted = set(times)
        for t in times:
            results[(query.promql, t)] = []
        for labels, points in source.matrix(query.promql, times[0] / 1000, times[-1] / 1000, step / 1000):
            for at, value in points:
                if (t := to_millis(at)) in wanted:
                    results[(query.promql, t)].append((labels, value))
    return results


def _bounded(source: PromQL, deadline: float | None) -> AbstractContextManager[None]:
    """The source's own deadline context, when it has one (a :class:`PrometheusClient` does)."""
    if deadline is not None and isinstance(source, PrometheusClient):
        return source.deadline(deadline)
    return nullcontext()


def _look_deadline(source: PromQL, look_timeout: float | None) -> tuple[float | None, float | None]:
    """(seconds, monotonic deadline) of a look: ``look_timeout``, else the client's ``look_timeout`` setting."""
    seconds = look_timeout
    if seconds is None and isinstance(source, PrometheusClient):
        seconds = source.settings.look_timeout
    return seconds, (time.monotonic() + seconds if seconds is not None else None)


def observe(
    source: PromQL,
    rollouts: Sequence[ModelRollout],
    windows_by_rollout: Mapping[str, Sequence[Window]],
    at: float,
    *,
    labels: Labels | None = None,
    look_timeout: float | None = None,
) -> dict[str, Observation]:
    """One look for all ``rollouts`` together: O(metric kinds x window lengths) requests, not O(rollouts).

    Windows of the same length share one range query when their ends lie on a common grid, so a
    caller that aligns window ends to the clock (``end = k x interval``) keeps one request per family.
    The whole look takes at most ``look_timeout`` seconds (default: the client's setting).

    Raises :class:`PrometheusError` (see the module docs); :func:`observe_or_explain` turns it into no data.
    """
    the_plan = plan(rollouts, windows_by_rollout, at, labels)
    seconds, deadline = _look_deadline(source, look_timeout)
    with _bounded(source, deadline):
        results = fetch(source, the_plan.queries, deadline=deadline, look_timeout=seconds)
    return build_observations(the_plan, results)


def observe_or_explain(
    source: PromQL,
    rollouts: Sequence[ModelRollout],
    windows_by_rollout: Mapping[str, Sequence[Window]],
    at: float,
    *,
    labels: Labels | None = None,
    look_timeout: float | None = None,
) -> tuple[dict[str, Observation], PrometheusError | None]:
    """:func:`observe`, with a failed look turned into *no data* for every rollout, saying why."""
    try:
        return observe(source, rollouts, windows_by_rollout, at, labels=labels, look_timeout=look_timeout), None
    except PrometheusError as exc:
        reason = f"{exc.reason} ({exc.kind})"
        return {r.key: no_data(r, windows_by_rollout.get(r.key, ()), reason) for r in rollouts}, exc
