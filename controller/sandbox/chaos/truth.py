"""Rollouts whose truth is known: their policies, their pods, and a MetricsSource that tells that truth.

Each rollout of a soak has a canary of one of three kinds (:data:`TRUTHS`): ``good`` (as good as
stable), ``regressing`` (1.5 % errors against stable's 0.5 %: worse beyond the 0.25-point margin, yet
within the 2 % SLO, so only the comparison can tell) and ``slo-breach`` (a p99 latency over the
250 ms SLO from its *onset*: at the start, or minutes into the rollout at a higher weight, see
:func:`breach_minute`). :class:`TruthMetrics` serves each window's traffic deterministically, split
by the canary share the stored VirtualServices really gave it in that window (:class:`RouteTimeline`,
what the mesh does with the routes as written, whatever the status records), 200 requests per
second, in-process: no Prometheus, no randomness.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.api.model import API_VERSION, GROUP, KIND, PLURAL, ModelRollout
from controller.engine.ports import EdgeFailure
from controller.metrics.samples import CountSeries, HistogramSeries, MetricData, Observation, Window
from controller.sandbox.chaos.invariants import ISTIO, canary_weight
from controller.sandbox.localapi import LocalApiServer, ready_pod

NAMESPACE = "chaos"
TRUTHS = ("good", "regressing", "slo-breach")
STABLE_ERRORS = 0.005
RPS = 200
#: Istio's latency buckets in seconds, and the cumulative share of requests within each.
EDGES = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)
HEALTHY = (0.0, 0.0, 0.0, 0.02, 0.25, 0.6, 0.93, 0.995, 0.9995, 1.0, 1.0, 1.0, 1.0, 1.0)
#: 10 % of requests over 250 ms and 3 % over 500 ms: a breach of either SLO the workload's policy
#: edits may set (250 or 300 ms, whose bucket reaches to 500 ms). With 1 % over 500 ms, a 300 ms SLO
#: was not provably breached (workload seed 501): an edit would have changed the canary's truth.
SLOW = (0.0, 0.0, 0.0, 0.0, 0.02, 0.2, 0.6, 0.9, 0.97, 1.0, 1.0, 1.0, 1.0, 1.0)
CANARY = {"good": (STABLE_ERRORS, HEALTHY), "regressing": (0.015, HEALTHY), "slo-breach": (STABLE_ERRORS, SLOW)}
#: Every rollout's analysis interval (its policy's ``1m``): the windows' length.
INTERVAL = 60.0


def breach_minute(index: int, seed: int) -> int:
    """Minutes from the start until rollout ``index``'s canary (if it is an ``slo-breach`` one) starts
    breaching: 0, 1 or 2, so some breach at the first step (5 %) and some at 25 % or 50 % after passing
    analyses; depends on the seed only modulo 3, as the mix does."""
    return (index // len(TRUTHS) + seed) % 3


def rollout_name(index: int) -> str:
    return f"model-{index:03d}"


def policy(index: int) -> dict[str, Any]:
    """Rollout ``index``: its own Service ``model-NNN``, steps 5 -> 25 -> 50 -> 100 % every minute."""
    name = rollout_name(index)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "service": {"name": name, "port": 8080},
            "stable": {"name": "v1", "labels": {"app": name, "version": "v1"}},
            "canary": {"name": "v2", "labels": {"app": name, "version": "v2"}},
            "strategy": {
                "steps": [5, 25, 50, 100],
                "interval": f"{INTERVAL:.0f}s",
                "minRequests": 500,
                "progressDeadline": "30m",
                "onNoData": "Hold",
                "onInconclusive": "Hold",
            },
            "analysis": {
                "alpha": 0.05,
                "metrics": [
                    {"name": "latency-p99", "kind": "IstioLatency", "quantile": 0.99, "slo": {"max": "250ms"}},
                    {
                        "name": "error-rate",
                        "kind": "IstioErrorRate",
                        "slo": {"max": "2%"},
                        "margin": {"absolute": "0.25%"},
                    },
                ],
            },
        },
    }


def ready_pods(index: int) -> list[dict[str, Any]]:
    """One ready pod per version of rollout ``index`` (the readiness gate lets traffic move)."""
    name = rollout_name(index)
    return [ready_pod(NAMESPACE, f"{name}-{v}-0", {"app": name, "version": v}) for v in ("v1", "v2")]


def user_objects(index: int) -> list[dict[str, Any]]:
    """A DestinationRule and a VirtualService the user had for rollout ``index``'s host (adopted)."""
    name = rollout_name(index)
    istio = "networking.istio.io/v1"
    labels, annotations = {"owner": "team"}, {"team.example.com/ticket": "ML-7"}
    rule = {
        "host": name,
        "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
        "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
    }
    route = {"name": "main", "timeout": "5s", "route": [{"destination": {"host": name, "subset": "v1"}}]}
    rule_meta = {"name": f"{name}-dr", "namespace": NAMESPACE, "labels": labels, "annotations": annotations}
    service_meta = {"name": f"{name}-vs", "namespace": NAMESPACE, "labels": labels}
    return [
        {"apiVersion": istio, "kind": "DestinationRule", "metadata": rule_meta, "spec": rule},
        {
            "apiVersion": istio,
            "kind": "VirtualService",
            "metadata": service_meta,
            "spec": {"hosts": [name], "http": [route]},
        },
    ]


@dataclass
class RouteTimeline:
    """The canary weight the VirtualServices stored in ``api`` give each rollout over time (``now``,
    the soak's clock): a write observer, so it sees every route write, late or lost answers included."""

    api: LocalApiServer
    now: Callable[[], float]
    #: Per rollout key (namespace/name): when its canary weight changed, and to what.
    changes: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def __call__(self, version: int, event: str, key: tuple[str, str, str, str], obj: dict[str, Any]) -> None:
        if key[:2] != (ISTIO, "virtualservices"):
            return
        namespace, at = key[2], self.now()
        services = [o for k, o in self.api.objects.items() if k[:3] == (ISTIO, "virtualservices", namespace)]
        for k, rollout in self.api.objects.items():  # the store's lock is held: the objects as stored
            if k[:3] != (GROUP, PLURAL, namespace):
                continue
            weight = max((canary_weight(rollout, s) for s in services), default=0)
            changes = self.changes.setdefault(f"{namespace}/{k[3]}", [])
            if (changes[-1][1] if changes else 0) != weight:
                changes.append((at, weight))

    def serving_since(self, key: str, since: float) -> float | None:
        """From when on (``since`` or later) the stored routes give the canary traffic; None: not yet."""
        weight = 0  # before ``at``
        for at, changed in self.changes.get(key, []):
            if at > since and weight > 0:
                return since
            if at > since and changed > 0:
                return at
            weight = changed
        return since if weight > 0 else None

    def share(self, key: str, start: float, end: float) -> float:
        """The canary's time-weighted share of the traffic in ``(start, end]``."""
        changes = self.changes.get(key, [])
        times = [at for at, _ in changes]
        cuts = sorted({start, end, *(at for at in times if start < at < end)})
        total = 0.0
        for a, b in itertools.pairwise(cuts):
            index = bisect.bisect_right(times, a) - 1
            total += (b - a) * (changes[index][1] if index >= 0 else 0) / 100
        return total / (end - start) if end > start else 0.0


@dataclass
class TruthMetrics:
    """The :class:`controller.engine.ports.MetricsSource` of a soak: each rollout's traffic as its truth
    says, split by the canary share the stored routes gave it in each window (``routes``; None: the
    share the controller recorded, as a mesh that always follows the status would); never fails."""

    truths: dict[str, str] = field(default_factory=dict)  # rollout key -> truth
    #: When each ``slo-breach`` canary starts breaching (on the window grid); absent: from the start.
    onsets: dict[str, float] = field(default_factory=dict)
    routes: RouteTimeline | None = None
    looks: int = 0

    def observe(
        self, rollouts: Sequence[ModelRollout], windows: Mapping[str, Sequence[Window]], at: float
    ) -> tuple[dict[str, Observation], EdgeFailure | None]:
        self.looks += 1
        out = {}
        for rollout in rollouts:
            errors, breached = CANARY[self.truths.get(rollout.key, "good")]
            onset = self.onsets.get(rollout.key, -math.inf)
            ws = tuple(windows[rollout.key])
            routes = self.routes
            shares = [routes.share(rollout.key, w.start, w.end) if routes else w.canary_share for w in ws]
            stable = [round(RPS * (w.end - w.start) * (1 - share)) for w, share in zip(ws, shares, strict=True)]
            canary = [round(RPS * (w.end - w.start) * share) for w, share in zip(ws, shares, strict=True)]
            histogram = HistogramSeries(
                EDGES,
                tuple(tuple(float(round(n * s)) for s in HEALTHY) for n in stable),
                tuple(
                    tuple(float(round(n * s)) for s in (breached if w.start >= onset else HEALTHY))
                    for n, w in zip(canary, ws, strict=True)
                ),
            )
            counts = CountSeries(
                tuple(math.floor(n * STABLE_ERRORS) for n in stable),
                tuple(stable),
                tuple(math.floor(n * errors) for n in canary),
                tuple(canary),
            )
            metrics = (MetricData("latency-p99", histogram), MetricData("error-rate", counts))
            out[rollout.key] = Observation(ws, tuple(stable), tuple(canary), metrics)
        return out, None
