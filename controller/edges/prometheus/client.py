"""The Prometheus client: :class:`PromQL` over HTTP through prometheus-api-client, every failure typed.

:class:`PrometheusSettings` says where Prometheus is and how to talk to it (auth, TLS, bounds);
:class:`PrometheusClient` runs one query as one HTTP request over the guarded transport
(:mod:`controller.edges.prometheus.transport`) and reads the answer, or classifies its failure by
type into the errors of :mod:`controller.edges.prometheus.errors`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import requests
import urllib3.exceptions
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from controller.api.text import printable
from controller.edges.prometheus.errors import (
    AnswerTooLarge,
    PrometheusConfigError,
    PrometheusError,
    PrometheusTimeout,
    PrometheusUnavailable,
    QueryError,
)
from controller.edges.prometheus.transport import Guard, GuardedAdapter, NoRedirectSession, is_timeout
from controller.metrics.selectors import promql_duration, to_millis

Sample = tuple[dict[str, str], float]
Points = list[tuple[float, float]]
#: Default cap on one answer's body, after decompression (see :class:`PrometheusSettings`).
MAX_ANSWER_BYTES = 16 * 2**20
#: Default total deadline of one look, every query included (see :class:`PrometheusSettings`).
LOOK_TIMEOUT = 60.0


class PromQL(Protocol):
    """What canarist needs from a metrics source: PromQL evaluated at explicit times."""

    def vector(self, query: str, at: float) -> list[Sample]:
        """The instant vector of ``query`` at ``at`` (Unix seconds)."""
        ...

    def matrix(self, query: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], Points]]:
        """``query`` evaluated at ``start``, ``start + step``, ... ``<= end``: per series its (time, value) points."""
        ...


#: The PromQL stores canarist is tested against. VictoriaMetrics' ``increase()`` counts from the last
#: sample before a window however old it is, so each window is also checked for a sample within
#: ``max_scrape_interval`` before its start (else a scrape gap's requests land in the next window).
STORES = ("prometheus", "victoria-metrics")


@dataclass(frozen=True)
class PrometheusSettings:
    """Where Prometheus is and how to talk to it.

    ``timeout`` bounds each query's whole answer (connect, headers, body) on the client, and the
    evaluation on the server. ``look_timeout`` bounds all queries of one look together.
    ``max_answer_bytes`` refuses an answer whose body (decompressed) is larger. ``store``: which
    PromQL store answers (:data:`STORES`); on VictoriaMetrics a window needs a sample of each counter
    within ``max_scrape_interval`` seconds before its start.
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
    store: str = "prometheus"
    max_scrape_interval: float = 30.0

    @property
    def gap_seconds(self) -> float | None:
        """How close before each window a counter needs a sample on this store; None: no check needed."""
        return self.max_scrape_interval if self.store == "victoria-metrics" else None

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise PrometheusConfigError(f"Prometheus URL must start with http:// or https://, got {self.url!r}")
        if self.store not in STORES:
            raise PrometheusConfigError(f"store must be one of {', '.join(STORES)}, got {self.store!r}")
        for name in ("timeout", "look_timeout", "max_scrape_interval"):
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


class PrometheusClient:
    """:class:`PromQL` over HTTP, through prometheus-api-client. Not thread-safe: one client per thread."""

    def __init__(self, settings: PrometheusSettings) -> None:
        self.settings = settings
        self.requests_sent = 0
        self._guard = Guard()
        self._deadline: float | None = None  # monotonic end of the current look, if any
        self._last: requests.Response | None = None  # the current query's answer, for its status and headers
        session = NoRedirectSession()
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
        adapter = GuardedAdapter(self._guard, settings.max_answer_bytes)
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
        """The samples stamped ``at``: one stamped with another time (a stale or cached answer) is left
        out, as :func:`~controller.edges.prometheus.look.fetch` leaves out a range answer's points off
        the times asked, so another time's value is never read as this time's."""
        params = {"time": _seconds(at), "timeout": promql_duration(self.settings.timeout)}
        # timeout: (connect, read) seconds; typed int in the library, which hands it to requests as is
        data = self._call(
            query,
            lambda timeout: self._connect.custom_query(query, params=params, timeout=timeout),  # type: ignore[arg-type]
        )
        if not all(isinstance(item, dict) and "value" in item for item in data):
            raise QueryError("the query did not return an instant vector", query=query)
        asked = to_millis(at)
        return [
            (dict(item.get("metric", {})), _number(item["value"][1], query))
            for item in data
            if _stamp(item["value"][0], query) == asked
        ]

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
        if self._guard.fired or (caught is not None and is_timeout(caught)):
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


def _stamp(text: Any, query: str) -> int:
    """A sample's time in milliseconds."""
    value = _number(text, query)
    if not math.isfinite(value):
        raise QueryError(f"Prometheus returned a sample time {text!r}", query=query)
    return to_millis(value)


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
