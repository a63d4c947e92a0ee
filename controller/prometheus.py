"""The Prometheus edge: PromQL over HTTP with prometheus-api-client, and every failure classified.

The only module that imports ``prometheus_api_client`` and ``requests``. The rest of canarist
sees :class:`PromQL`, two methods with explicit times, and three exceptions that say whether to
retry:

* :class:`PrometheusUnavailable` (temporary, carries ``retry_after``): connection refused or
  reset, a timeout (client or server side), HTTP 429 and 5xx.
* :class:`QueryError` (configuration): Prometheus refused the PromQL (HTTP 400 ``bad_data``,
  422 ``execution``), or answered with something other than a vector or matrix.
* :class:`PrometheusConfigError` (configuration): credentials refused, wrong URL, TLS failure, an
  answer that is not the Prometheus API.

Callers turn any of them into *no data* with the reason (:func:`observe_or_explain` does):
never a pass, never a canary failure. Empty results, NaN and Inf are data problems, judged per
window by :mod:`controller.observe`. The client does not retry on its own (a retry is the next
tick's business), so one call is one HTTP request: ``requests_sent`` counts them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import reduce
from itertools import pairwise
from math import gcd
from pathlib import Path
from typing import Any, Protocol

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from controller.observe import Results, build_observations, no_data
from controller.policy import ModelRollout
from controller.queries import Labels, Query, plan, promql_duration, to_millis
from controller.samples import Observation, Window

Sample = tuple[dict[str, str], float]
Points = list[tuple[float, float]]
#: Prometheus refuses range queries of more than 11,000 points per series.
MAX_POINTS = 11_000


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

    def __init__(self, reason: str, *, query: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.query = query


class PrometheusUnavailable(PrometheusError):  # noqa: N818 - the name says what the caller acts on
    """Temporary: Prometheus could not answer now. Retry after ``retry_after`` seconds."""

    retryable = True

    def __init__(self, reason: str, *, retry_after: float, query: str = "") -> None:
        super().__init__(reason, query=query)
        self.retry_after = retry_after


class QueryError(PrometheusError):
    """Configuration error: Prometheus refused the query itself. Retrying will not help."""


class PrometheusConfigError(PrometheusError):
    """Configuration error: wrong URL, refused credentials, TLS failure. Retrying will not help."""


@dataclass(frozen=True)
class PrometheusSettings:
    """Where Prometheus is and how to talk to it.

    ``timeout`` bounds each socket operation on the client and the evaluation on the server.
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

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise PrometheusConfigError(f"Prometheus URL must start with http:// or https://, got {self.url!r}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise PrometheusConfigError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if self.bearer_token is not None and self.bearer_token_file is not None:
            raise PrometheusConfigError("give a bearer token or a bearer token file, not both")
        if (self.bearer_token or self.bearer_token_file) and self.basic_auth is not None:
            raise PrometheusConfigError("give bearer token or basic auth, not both")


class PrometheusClient:
    """:class:`PromQL` over HTTP. Not thread-safe: one client per thread."""

    def __init__(self, settings: PrometheusSettings) -> None:
        self.settings = settings
        self.requests_sent = 0
        self._last: requests.Response | None = None
        session = requests.Session()
        session.verify = False if settings.insecure else (settings.ca_file or True)
        if settings.client_cert is not None:
            session.cert = settings.client_cert
        session.hooks["response"].append(self._remember)
        headers: dict[str, str] = {}
        token = settings.bearer_token
        if settings.bearer_token_file is not None:
            try:
                token = Path(settings.bearer_token_file).read_text().strip()
            except OSError as exc:
                raise PrometheusConfigError(f"cannot read the bearer token file: {exc}") from None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._url = settings.url.rstrip("/")
        options: dict[str, Any] = {
            "url": self._url,
            "headers": headers,
            "retry": Retry(total=0, redirect=0, status_forcelist=()),  # no retries of our own: the next tick is
            "auth": settings.basic_auth,
            "session": session,
            "timeout": settings.timeout,  # typed int in the library, handed to requests as is
        }
        self._connect = PrometheusConnect(**options)

    def _remember(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._last = response

    def close(self) -> None:
        self._connect.close()

    def vector(self, query: str, at: float) -> list[Sample]:
        params = {"time": _seconds(at), "timeout": promql_duration(self.settings.timeout)}
        data = self._call(query, lambda: self._connect.custom_query(query, params=params))
        if not all(isinstance(item, dict) and "value" in item for item in data):
            raise QueryError("the query did not return an instant vector", query=query)
        return [(dict(item.get("metric", {})), _number(item["value"][1], query)) for item in data]

    def matrix(self, query: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], Points]]:
        # The library rounds start and end to whole seconds; the params below override them exactly.
        params = {
            "start": _seconds(start),
            "end": _seconds(end),
            "step": _seconds(step),
            "timeout": promql_duration(self.settings.timeout),
        }
        first, last = datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
        data = self._call(
            query, lambda: self._connect.custom_query_range(query, first, last, params["step"], params=params)
        )
        if not all(isinstance(item, dict) and "values" in item for item in data):
            raise QueryError("the query did not return a range vector", query=query)
        return [
            (dict(item.get("metric", {})), [(float(t), _number(v, query)) for t, v in item["values"]]) for item in data
        ]

    def _call(self, query: str, send: Any) -> list[Any]:
        self.requests_sent += 1
        self._last = None
        try:
            data = send()
        except requests.exceptions.Timeout:
            raise self._unavailable(f"timed out after {self.settings.timeout:g}s", query) from None
        except requests.exceptions.SSLError as exc:
            raise PrometheusConfigError(f"TLS failure talking to {self._url}: {_short(exc)}", query=query) from None
        except requests.exceptions.ConnectionError as exc:
            text = str(exc)
            why = f"timed out after {self.settings.timeout:g}s" if "timed out" in text else "connection failed"
            raise self._unavailable(f"{why}: {_short(exc)}", query) from None
        except PrometheusApiClientException:
            raise self._http_error(query) from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
            raise PrometheusConfigError(f"invalid Prometheus URL {self._url!r}", query=query) from None
        except (ValueError, KeyError, TypeError):
            raise PrometheusConfigError(
                f"{self._url} did not answer as the Prometheus HTTP API (is the URL right?)", query=query
            ) from None
        except requests.exceptions.RequestException as exc:
            raise self._unavailable(f"request failed: {_short(exc)}", query) from None
        if not isinstance(data, list):
            raise QueryError("the query did not return a vector", query=query)
        return data

    def _unavailable(self, why: str, query: str, retry_after: float | None = None) -> PrometheusUnavailable:
        delay = self.settings.retry_after if retry_after is None else retry_after
        return PrometheusUnavailable(f"Prometheus at {self._url} unavailable: {why}", retry_after=delay, query=query)

    def _http_error(self, query: str) -> PrometheusError:
        """Classify a non-200 answer by its status and the API's ``errorType``."""
        response = self._last
        if response is None:
            return self._unavailable("no answer", query)
        status = response.status_code
        try:
            body = response.json()
            kind, error = str(body.get("errorType", "")), str(body.get("error", ""))
        except ValueError:
            kind, error = "", response.text[:200]
        detail = f"HTTP {status}" + (f" {kind}" if kind else "") + (f": {error}" if error else "")
        if status in (400, 422):
            return QueryError(f"Prometheus refused the query ({detail})", query=query)
        if status in (401, 403):
            return PrometheusConfigError(f"Prometheus refused the credentials ({detail})", query=query)
        if status == 429 or status >= 500:
            why = f"query timed out on the server ({detail})" if kind == "timeout" else detail
            return self._unavailable(why, query, _retry_after(response.headers))
        return PrometheusConfigError(f"unexpected answer from {self._url} ({detail})", query=query)


def _seconds(value: float) -> str:
    return f"{to_millis(value) / 1000:.3f}"


def _number(text: Any, query: str) -> float:
    try:
        return float(text)  # "NaN", "+Inf" and "-Inf" included: judged per window later
    except (TypeError, ValueError):
        raise QueryError(f"Prometheus returned a non-numeric sample value {text!r}", query=query) from None


def _short(exc: Exception) -> str:
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


def fetch(source: PromQL, queries: Sequence[Query]) -> Results:
    """Run every query: one range query when its times lie on a cheap grid, else one instant query per time.

    Stops at the first failure (raising it): when Prometheus is down, one timeout is enough.
    """
    results: dict[tuple[str, int], list[tuple[Mapping[str, str], float]]] = {}
    for query in queries:
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


def observe(
    source: PromQL,
    rollouts: Sequence[ModelRollout],
    windows_by_rollout: Mapping[str, Sequence[Window]],
    at: float,
    *,
    labels: Labels | None = None,
) -> dict[str, Observation]:
    """One look for all ``rollouts`` together: O(metric kinds x window lengths) requests, not O(rollouts).

    Windows of the same length share one range query when their ends lie on a common grid, so a
    caller that aligns window ends to the clock (``end = k x interval``) keeps one request per family.

    Raises :class:`PrometheusError` (see the module docs); :func:`observe_or_explain` turns it into no data.
    """
    the_plan = plan(rollouts, windows_by_rollout, at, labels)
    return build_observations(the_plan, fetch(source, the_plan.queries))


def observe_or_explain(
    source: PromQL,
    rollouts: Sequence[ModelRollout],
    windows_by_rollout: Mapping[str, Sequence[Window]],
    at: float,
    *,
    labels: Labels | None = None,
) -> tuple[dict[str, Observation], PrometheusError | None]:
    """:func:`observe`, with a failed look turned into *no data* for every rollout, saying why."""
    try:
        return observe(source, rollouts, windows_by_rollout, at, labels=labels), None
    except PrometheusError as exc:
        kind = "temporary" if exc.retryable else "configuration error"
        reason = f"{exc.reason} ({kind})"
        return {r.key: no_data(r, windows_by_rollout.get(r.key, ()), reason) for r in rollouts}, exc
