"""The demo's scenarios and its rollout policy: what the canary does wrong, and what should happen.

Pure values. The policy is an ordinary ModelRollout (validated like any file in git), with its
interval, deadline and suspicion hold divided by the demo's speed: a faster demo looks more often on fewer
requests per look, so it decides in fewer seconds but over about as many requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.api.units import format_duration

NAMESPACE = "demo"
NAME = "fraud-detector"
SERVICE = "fraud-detector"
STABLE, CANARY = "v1", "v2"
#: Looks a step keeps its weight while a metric leans towards a regression.
SUSPICION_INTERVALS = 3
#: Seconds between looks at speed 1, and how long one step may wait for evidence.
BASE_INTERVAL = 10.0
BASE_DEADLINE = 150.0
STEPS = (10, 25, 50)
#: The stable's compute per inference (ms of CPU, standing in for GPU time) when a scenario compares GPU cost.
COMPUTE_MS = 1.0
#: The accuracy scenario's broken label join: 11 to 15 points less accurate (seeds 0-3), above the 75% SLO.
MISLABEL_RATE = 0.4


@dataclass(frozen=True)
class Scenario:
    """How the canary behaves, and the outcome a correct controller reaches."""

    name: str
    summary: str
    expected_phase: str  # Succeeded or Failed
    expected_metric: str | None = None  # the metric a rollback must name
    slowdown: float = 1.0  # the canary's service time, relative to stable's
    error_rate: float = 0.0  # the canary's share of deliberate 500s
    mislabel_rate: float = 0.0  # > 0: the canary model was trained on labels from a broken join
    breaks_at_step: int | None = None  # the canary turns bad once the rollout reaches this step
    break_error_rate: float = 0.0
    slo_breach: bool = False  # the rollback must be an SLO breach (at once), not a proven regression
    #: The canary's Triton model config names its output otherwise: the pre-traffic gate must refuse it
    #: (served by Triton only).
    signature_change: bool = False
    #: The canary's compute per inference relative to stable's; set: the pods export GPU time (a CPU
    #: stand-in in the shape of canarist gpu-agent's series) and the policy compares GPU-seconds per inference.
    gpu_cost: float | None = None


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("good", "the canary is as good as stable: it is promoted step by step", "Succeeded"),
        Scenario(
            "latency",
            "the canary is 60% slower: a proven latency regression rolls it back",
            "Failed",
            "latency-p90",
            slowdown=1.6,
        ),
        Scenario(
            "accuracy",
            "the canary model was trained on a broken label join: its predictions drift, and it is rolled back "
            "before the late labels prove it less accurate",
            "Failed",
            "predictions",
            mislabel_rate=MISLABEL_RATE,
        ),
        Scenario(
            "errors",
            "the canary fails 3% of requests (stable: none): a proven error-rate regression rolls it back",
            "Failed",
            "error-rate",
            error_rate=0.03,
        ),
        Scenario(
            "slo-breach",
            "the canary is healthy, then at 25% starts failing 40% of requests: an SLO breach rolls it back at once",
            "Failed",
            "error-rate",
            breaks_at_step=1,
            break_error_rate=0.4,
            slo_breach=True,
        ),
        Scenario(
            "gpu-cost",
            "the canary is as accurate and as fast but computes twice as long per inference: rolled back on "
            "GPU-seconds per inference",
            "Failed",
            "gpu-seconds-per-inference",
            gpu_cost=2.0,
        ),
        Scenario(
            "bad-signature",
            "the canary's Triton model renames its output: the gate refuses it before it gets one request",
            "Failed",
            signature_change=True,
        ),
    )
}
#: How the model versions are served: in-process, or each by its own real Triton behind its sidecar.
SERVING = ("builtin", "triton")


def interval_seconds(speed: float) -> float:
    return max(BASE_INTERVAL / speed, 1.0)


def demo_policy(speed: float = 1.0, gate: dict[str, Any] | None = None, *, gpu_cost: bool = False) -> dict[str, Any]:
    """The ModelRollout the demo applies: latency, errors, accuracy on labelled outcomes and how differently
    the versions predict (their score distributions, label-free), ``gate``
    (``spec.gate``) when the versions are served by Triton, and with ``gpu_cost`` GPU-seconds per
    inference (no more than 25 % above stable's)."""
    interval = interval_seconds(speed)
    policy: dict[str, Any] = {
        "apiVersion": "canarist.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "canarist-demo"}},
        "spec": {
            "service": {"name": SERVICE, "port": 8080},
            "stable": {"name": STABLE, "labels": {"app": SERVICE, "version": STABLE}},
            "canary": {"name": CANARY, "labels": {"app": SERVICE, "version": CANARY}},
            "strategy": {
                "steps": list(STEPS),
                "interval": format_duration(interval),
                "minRequests": 300,
                "progressDeadline": format_duration(max(BASE_DEADLINE / speed, interval)),
                "onNoData": "Hold",
                "onInconclusive": "Abort",
                "holdOnSuspicion": format_duration(SUSPICION_INTERVALS * interval),
            },
            "analysis": {
                "alpha": 0.05,
                "metrics": [
                    {
                        "name": "latency-p90",
                        "kind": "IstioLatency",
                        "quantile": 0.9,
                        "slo": {"max": "250ms"},
                        "margin": {"relative": "20%"},
                    },
                    {
                        "name": "error-rate",
                        "kind": "IstioErrorRate",
                        "slo": {"max": "5%"},
                        "margin": {"absolute": "1%"},
                    },
                    {
                        "name": "accuracy",
                        "kind": "CustomRatio",
                        "higherIsBetter": True,
                        "ratio": {
                            "success": "fraud_predictions_correct_total",
                            "total": "fraud_predictions_labelled_total",
                            "versionLabel": "version",
                            "matchLabels": {"model": SERVICE},
                        },
                        "slo": {"min": "75%"},
                        "margin": {"absolute": "5%"},
                    },
                    {
                        "name": "predictions",
                        "kind": "PredictionDistribution",
                        "outputs": {
                            "histogram": "fraud_score",
                            "matchLabels": {"model": SERVICE},
                            "positiveAbove": 0.5,
                        },
                        "margin": {"absolute": "10%"},
                    },
                ],
            },
        },
    }
    if gate is not None:
        policy["spec"]["gate"] = gate
    if gpu_cost:
        policy["spec"]["analysis"]["metrics"].append(
            {"name": "gpu-seconds-per-inference", "kind": "AgentGpuSecondsPerInference", "margin": {"relative": "25%"}}
        )
    return policy
