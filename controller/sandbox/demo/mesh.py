"""The demo's stand-in for istiod: it applies the VirtualService canarist wrote to haproxy's weights.

It reads the objects from the local API stand-in exactly as istiod reads them from a cluster, and
keeps Istio's rule that a route to a subset the DestinationRule does not define is an error (Envoy
would answer 503): such a VirtualService is not applied and is counted. Each weight change is
recorded with haproxy's per-version counters at that moment, so the actual split of every period
can be checked against the weight in force.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.sandbox.demo.haproxy import weights_from_virtual_service

ISTIO = "networking.istio.io"


class DataPlane(Protocol):
    def set_weights(self, weights: Mapping[str, int]) -> None: ...

    def served(self) -> dict[str, int]: ...


class ObjectSource(Protocol):
    def get(self, group: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Period:
    """A stretch of time under one set of weights, with haproxy's counters around its change.

    ``served_before`` is read just before the weights changed and ``served_at_start`` just after:
    requests answered in between (a snapshot can lag while the process is busy) are counted in
    neither period, so none is charged to weights it was not routed by.
    """

    started: float
    weights: dict[str, int]
    served_at_start: dict[str, int]
    served_before: dict[str, int]


@dataclass(frozen=True)
class SplitCheck:
    """How one period's requests were actually split, against its weights."""

    weights: dict[str, int]
    seconds: float
    served: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.served.values())

    def share(self, version: str) -> float:
        return self.served.get(version, 0) / self.total if self.total else 0.0


def split_checks(periods: list[Period], served_now: Mapping[str, int], now: float) -> list[SplitCheck]:
    """Per period: the requests each version served while its weights were in force."""
    out = []
    ends = [(p.started, p.served_before) for p in periods[1:]] + [(now, dict(served_now))]
    for period, (end, at_end) in zip(periods, ends, strict=True):
        served = {v: at_end.get(v, 0) - period.served_at_start.get(v, 0) for v in at_end}
        out.append(SplitCheck(dict(period.weights), end - period.started, served))
    return out


@dataclass
class MeshAgent:
    """Polls the VirtualService and DestinationRule and applies the weights to the data plane."""

    source: ObjectSource
    plane: DataPlane
    namespace: str
    name: str
    clock: Callable[[], float] = time.time
    poll: float = 0.1
    periods: list[Period] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # VirtualServices that routed to an undefined subset
    _seen: str = ""

    def begin(self, weights: Mapping[str, int]) -> None:
        """The weights in force before any VirtualService exists (all traffic to stable)."""
        self._change(weights)

    def sync(self) -> None:
        """One look: apply the VirtualService's weights if they changed."""
        service = self.source.get(ISTIO, "virtualservices", self.namespace, self.name)
        if service is None:
            return
        version = str((service.get("metadata") or {}).get("resourceVersion", ""))
        if version == self._seen:
            return
        self._seen = version
        weights = weights_from_virtual_service(service)
        rule = self.source.get(ISTIO, "destinationrules", self.namespace, self.name) or {}
        defined = {s.get("name") for s in (rule.get("spec") or {}).get("subsets", [])}
        missing = sorted(s for s, w in weights.items() if w > 0 and s not in defined)
        if missing:
            self.refused.append(f"VirtualService {version} routes to undefined subsets {missing}")
            return
        if self.periods and self.periods[-1].weights == weights:
            return
        self._change(weights)

    def _change(self, weights: Mapping[str, int]) -> None:
        before = self.plane.served()
        self.plane.set_weights(weights)
        self.periods.append(Period(self.clock(), dict(weights), self.plane.served(), before))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.sync()
            stop.wait(self.poll)

    def start(self) -> Callable[[], None]:
        """Run in a thread; returns the function that stops it."""
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="mesh-agent", daemon=True)
        thread.start()

        def halt() -> None:
            stop.set()
            thread.join(timeout=5)

        return halt

    def checks(self) -> list[SplitCheck]:
        return split_checks(self.periods, self.plane.served(), self.clock())
