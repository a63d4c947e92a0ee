"""The Prometheus edge: PromQL over HTTP with prometheus-api-client, bounded in time and bytes, every failure typed.

The only package that imports ``prometheus_api_client`` and ``requests``. Queries go through the
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

This ``__init__`` presents the package's public API (everything importers use), so that
``from controller.edges.prometheus import PrometheusClient, PrometheusSettings, observe_or_explain``
works; the code lives in ``errors`` (the typed failures), ``transport`` (the guarded HTTP session:
deadline watchdog, byte cap, no retries or redirects), ``client`` (settings and the client) and
``look`` (running a look's plan: ``observe``, ``observe_or_explain``).
"""

from controller.edges.prometheus.client import (
    LOOK_TIMEOUT,
    MAX_ANSWER_BYTES,
    Points,
    PrometheusClient,
    PrometheusSettings,
    PromQL,
    Sample,
)
from controller.edges.prometheus.errors import (
    AnswerTooLarge,
    PrometheusConfigError,
    PrometheusError,
    PrometheusTimeout,
    PrometheusUnavailable,
    QueryError,
)
from controller.edges.prometheus.look import MAX_POINTS, fetch, grid_step, observe, observe_or_explain

__all__ = [
    "LOOK_TIMEOUT",
    "MAX_ANSWER_BYTES",
    "MAX_POINTS",
    "AnswerTooLarge",
    "Points",
    "PromQL",
    "PrometheusClient",
    "PrometheusConfigError",
    "PrometheusError",
    "PrometheusSettings",
    "PrometheusTimeout",
    "PrometheusUnavailable",
    "QueryError",
    "Sample",
    "fetch",
    "grid_step",
    "observe",
    "observe_or_explain",
]
