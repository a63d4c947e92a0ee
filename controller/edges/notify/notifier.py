"""Delivering notifications off the reconcile path: a bounded queue, one worker, retries with backoff.

:meth:`Notifier.notify` only builds the payload and queues one delivery per sink that wants the
event (the rollout's own ``spec.notify`` sinks and the controller's default ones): it never waits
on the network, so a slow, failing or unreachable sink can neither delay nor change a decision. The
worker resolves each sink's URL when it sends (the Secret or file is read then, so a rotated
credential is picked up and the read stays off the loop), and retries a failure with exponential
backoff up to ``attempts`` times. A full queue drops the new delivery. Every outcome is counted
(``count(result)``: sent, retried, failed, dropped) and every failure is one log line naming the
sink, the rollout and the reason, never the URL.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from controller.api.notify import DEFAULT_EVENTS, Notify, NotifyEvent, SinkType
from controller.api.text import printable
from controller.edges.notify.sinks import DeliveryError, deliver, quiet_libraries
from controller.engine import notices
from controller.engine.ports import ClusterUnavailableError, NotFoundError
from controller.engine.reconcile import Outcome

log = logging.getLogger("canarist.notify")

#: Reads one key of a Secret in a namespace (the Kubernetes edge's ``read_secret``).
SecretReader = Callable[[str, str, str], str]
Sender = Callable[[SinkType, str, Mapping[str, Any]], None]


@dataclass(frozen=True)
class Sink:
    """Where to send: ``url()`` gives the URL when a delivery is made (it may raise DeliveryError)."""

    name: str
    type: SinkType
    url: Callable[[], str]
    events: tuple[NotifyEvent, ...] = DEFAULT_EVENTS


def file_sink(name: str, kind: SinkType, path: Path, events: Sequence[NotifyEvent] = DEFAULT_EVENTS) -> Sink:
    """A controller-wide sink whose URL is the text of ``path`` (a mounted Secret's key)."""

    def url() -> str:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise DeliveryError(f"the URL file {path}: {exc.strerror or type(exc).__name__}") from None

    return Sink(name, kind, url, tuple(events))


@dataclass(order=True)
class _Delivery:
    due: float
    order: int
    sink: Sink = field(compare=False)
    payload: dict[str, Any] = field(compare=False)
    attempt: int = field(default=0, compare=False)


class Notifier:
    """The controller's notifications (see the module docstring); :meth:`start` it, :meth:`close` it."""

    def __init__(
        self,
        *,
        read_secret: SecretReader | None = None,
        defaults: Sequence[Sink] = (),
        count: Callable[[str], None] = lambda result: None,
        report_url: str | None = None,
        queue_size: int = 1000,
        attempts: int = 4,
        backoff: float = 2.0,
        send: Sender | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        quiet_libraries()
        self.read_secret, self.defaults, self.count = read_secret, tuple(defaults), count
        self.report_url, self.queue_size, self.attempts, self.backoff = report_url, queue_size, attempts, backoff
        self.send: Sender = send or deliver
        self.clock, self.monotonic = clock, monotonic
        self._queue: list[_Delivery] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.in_flight = 0

    # --- the loop's side: never blocks -----------------------------------------------------------

    def notify(self, rollout: Mapping[str, Any], outcome: Outcome, event: NotifyEvent) -> None:
        """Queue ``event`` of ``rollout`` for every sink that wants it; returns at once."""
        metadata = rollout.get("metadata") or {}
        namespace, name = str(metadata.get("namespace", "")), str(metadata.get("name", ""))
        link = self.report_url.format(namespace=namespace, name=name) if self.report_url else None
        payload = notices.notification(rollout, outcome, event, at=self.clock(), report_url=link)
        for sink in (*self._own_sinks(rollout, namespace), *self.defaults):
            if event in sink.events:
                self._put(_Delivery(self.monotonic(), next(self._order), sink, payload))

    def _own_sinks(self, rollout: Mapping[str, Any], namespace: str) -> list[Sink]:
        raw = (rollout.get("spec") or {}).get("notify")
        if raw is None:
            return []
        try:
            notify = Notify.model_validate(raw)
        except ValidationError:  # the reconcile said why already; nothing is sent to a sink it cannot read
            return []
        return [
            Sink(
                f"{namespace}/{sink.name}",
                sink.type,
                self._secret_url(namespace, sink.url_from.secret_key_ref.name, sink.url_from.secret_key_ref.key),
                tuple(sink.events or DEFAULT_EVENTS),
            )
            for sink in notify.sinks
        ]

    def _secret_url(self, namespace: str, secret: str, key: str) -> Callable[[], str]:
        def url() -> str:
            if self.read_secret is None:
                raise DeliveryError("this controller reads no Secrets (no Kubernetes edge)")
            return self.read_secret(namespace, secret, key).strip()

        return url

    def _put(self, delivery: _Delivery) -> None:
        with self._cond:
            if len(self._queue) + self.in_flight >= self.queue_size or self._closing:
                self.count("dropped")
                log.warning("notification to %s dropped: the queue is full", delivery.sink.name)
                return
            heapq.heappush(self._queue, delivery)
            self._cond.notify()

    # --- the worker ------------------------------------------------------------------------------

    def start(self) -> Notifier:
        self._thread = threading.Thread(target=self._work, name="canarist-notify", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Send what is due within ``timeout`` seconds, then stop (what is left is dropped, counted)."""
        deadline = self.monotonic() + timeout
        with self._cond:
            while self._queue and self.monotonic() < deadline and self._thread is not None:
                self._cond.wait(0.1)
            self._closing = True
            for _ in self._queue:
                self.count("dropped")
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - self.monotonic()) + 1.0)

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self.in_flight

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closing and (not self._queue or self._queue[0].due > self.monotonic()):
                    wait = self._queue[0].due - self.monotonic() if self._queue else None
                    self._cond.wait(wait)
                if self._closing:
                    return
                delivery = heapq.heappop(self._queue)
                self.in_flight += 1
            try:
                self._deliver(delivery)
            finally:
                with self._cond:
                    self.in_flight -= 1
                    self._cond.notify_all()

    def _deliver(self, delivery: _Delivery) -> None:
        sink, payload = delivery.sink, delivery.payload
        what = f"{payload['event']} of {payload['namespace']}/{payload['rollout']}"
        try:
            self.send(sink.type, sink.url(), payload)
        except Exception as exc:  # DeliveryError, a Secret that cannot be read, or a sender's bug
            reason = str(exc) if isinstance(exc, DeliveryError) else _safe(exc)
            if delivery.attempt + 1 < self.attempts:
                self.count("retried")
                delay = self.backoff * 2**delivery.attempt
                log.info("notification %s to %s not delivered (%s): retrying in %.0fs", what, sink.name, reason, delay)
                retry = _Delivery(self.monotonic() + delay, next(self._order), sink, payload, delivery.attempt + 1)
                with self._cond:
                    heapq.heappush(self._queue, retry)
                return
            self.count("failed")
            log.warning("notification %s to %s failed after %d attempts: %s", what, sink.name, self.attempts, reason)
            return
        self.count("sent")


def _safe(exc: Exception) -> str:
    """An error told without its text (which could hold a URL), but for the Kubernetes edge's own
    ("get secret ns/name: 403 forbidden"), which name the Secret, never its value."""
    if isinstance(exc, (NotFoundError, ClusterUnavailableError)):
        return printable(str(exc), 300)
    return type(exc).__name__
