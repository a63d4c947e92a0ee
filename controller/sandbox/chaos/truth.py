"""Rollouts whose truth is known: their policies, their pods, and a MetricsSource that tells that truth.

Each rollout of a soak has a canary of one of three kinds (:data:`TRUTHS`): ``good`` (as good as
stable), ``regressing`` (1.5 % errors against stable's 0.5 %: worse beyond the 0.25-point margin, yet
within the 2 % SLO, so only the comparison can tell) and ``slo-breach`` (a p99 latency over the
250 ms SLO from its *onset*: at the start, or minutes into the rollout at a higher weight, see
:func:`breach_minute`). :class:`TruthMetrics` serves each window's traffic deterministically from
the window's canary share (200 requests per second split by it), in-process: no Prometheus, no
randomness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.api.model import API_VERSION, KIND, ModelRollout
from controller.engine.ports import EdgeFailure
from controller.metrics.samples import CountSeries, HistogramSeries, MetricData, Observation, Window

NAMESPACE = "chaos"
TRUTHS = ("good", "regressing", "slo-breach")
STABLE_ERRORS = 0.005
RPS = 200
#: Istio's latency buckets in seconds, and the cumulative share of requests within each.
EDGES = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)
HEALTHY = (0.0, 0.0, 0.0, 0.02, 0.25, 0.6, 0.93, 0.995, 0.9995, 1.0, 1.0, 1.0, 1.0, 1.0)
SLOW = (0.0, 0.0, 0.0, 0.0, 0.02, 0.2, 0.6, 0.9, 0.99, 1.0, 1.0, 1.0, 1.0, 1.0)
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
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{version}-0",
                "namespace": NAMESPACE,
                "labels": {"app": name, "version": version},
            },
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
        for version in ("v1", "v2")
    ]


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
class TruthMetrics:
    """The :class:`controller.engine.ports.MetricsSource` of a soak: each rollout's traffic as its truth
    says, split by each window's canary share; never fails."""

    truths: dict[str, str] = field(default_factory=dict)  # rollout key -> truth
    #: When each ``slo-breach`` canary starts breaching (on the window grid); absent: from the start.
    onsets: dict[str, float] = field(default_factory=dict)
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
            stable = [round(RPS * (w.end - w.start) * (1 - w.canary_share)) for w in ws]
            canary = [round(RPS * (w.end - w.start) * w.canary_share) for w in ws]
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
