"""The typed failures of the Prometheus edge: each says whether the same request may succeed later.

Callers act on the type (retry later, or report a configuration error), never on the text;
``kind`` is how :func:`controller.edges.prometheus.observe_or_explain` labels the reason.
"""

from __future__ import annotations


class PrometheusError(Exception):
    """A look at Prometheus failed; ``retryable`` says whether the same request may succeed later."""

    retryable = False
    kind = "configuration error"  # how observe_or_explain labels the reason

    def __init__(self, reason: str, *, query: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.query = query

    @property
    def explained(self) -> str:
        """The reason with what kind of failure it is, as a look's no-data reason says it."""
        return f"{self.reason} ({self.kind})"


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
