"""``canarist``: the product's own engine, the same analysis and state machine the controller runs.

It turns each simulated interval into the :class:`controller.metrics.samples.Observation` a Prometheus
look would give (a counter reset is a window without data), runs :func:`controller.judge.analysis.analyse`
and :func:`controller.judge.machine.decide` on a ModelRollout that states the benchmark's policy, and
maps the decision onto the harness's verdicts. It never looks at the truth.
"""

from __future__ import annotations

from bench.engines.base import BenchPolicy, Verdict
from bench.simulate import ISTIO_BUCKETS_MS, IntervalData, Truth, VersionInterval
from controller.api.model import ModelRollout
from controller.api.status import Action, Phase
from controller.judge.analysis import analyse
from controller.judge.machine import Status, decide
from controller.metrics.samples import CountSeries, HistogramSeries, MetricData, Observation, Window

#: Istio's default latency buckets, in seconds (the last is +Inf).
EDGES_S = tuple(b / 1000.0 for b in ISTIO_BUCKETS_MS)
#: Canary requests a step needs before it may advance (a tenth of a minute at 1 % of 100 rps).
MIN_REQUESTS = 50
#: How long a step keeps its weight while a metric leans towards a regression (the policy's
#: ``holdOnSuspicion``; the default is 10m, the benchmark allows more of its 2 h deadline).
HOLD_ON_SUSPICION = "20m"


def benchmark_rollout(
    policy: BenchPolicy, steps: list[int], hold_on_suspicion: str = HOLD_ON_SUSPICION
) -> ModelRollout:
    """The benchmark's policy written as a ModelRollout, as a platform team would."""
    return ModelRollout.model_validate(
        {
            "apiVersion": "canarist.io/v1alpha1",
            "kind": "ModelRollout",
            "metadata": {"name": "bench", "namespace": "bench"},
            "spec": {
                "service": {"name": "model", "port": 8080},
                "stable": {"name": "stable", "labels": {"version": "stable"}},
                "canary": {"name": "canary", "labels": {"version": "canary"}},
                "strategy": {
                    "steps": steps,
                    "interval": "1m",
                    "minRequests": MIN_REQUESTS,
                    "progressDeadline": f"{int(policy.deadline_s)}s",
                    "onNoData": "Hold",
                    "onInconclusive": "Hold",
                    "holdOnSuspicion": hold_on_suspicion,
                },
                "analysis": {
                    "alpha": policy.alpha,
                    "metrics": [
                        {
                            "name": "latency",
                            "kind": "IstioLatency",
                            "quantile": 0.99,
                            "slo": {"max": f"{policy.slo_p99_ms:g}ms"},
                            "margin": {"relative": policy.latency_margin_rel},
                        },
                        {
                            "name": "errors",
                            "kind": "IstioErrorRate",
                            "slo": {"max": policy.slo_error_rate},
                            "margin": {"absolute": policy.error_margin_abs},
                        },
                        {
                            "name": "accuracy",
                            "kind": "CustomRatio",
                            "ratio": {
                                "success": "model_correct_total",
                                "total": "model_labelled_total",
                                "matchLabels": {"model": "model"},
                            },
                            "margin": {"absolute": policy.accuracy_margin_abs},
                        },
                    ],
                },
            },
        }
    )


class CanaristEngine:
    """Accumulates the windows of one rollout and asks the controller's own functions each time."""

    name = "canarist"

    def __init__(self, hold_on_suspicion: str = HOLD_ON_SUSPICION) -> None:
        self.hold_on_suspicion = hold_on_suspicion
        self.policy = BenchPolicy()
        self.rollout: ModelRollout | None = None
        self.status = Status()
        self.windows: list[Window] = []
        self.requests: tuple[list[int | None], list[int | None]] = ([], [])
        self.errors: tuple[list[int | None], list[int | None]] = ([], [])
        self.labelled: tuple[list[int | None], list[int | None]] = ([], [])
        self.correct: tuple[list[int | None], list[int | None]] = ([], [])
        self.buckets: tuple[list[tuple[float, ...] | None], list[tuple[float, ...] | None]] = ([], [])

    def reset(self, policy: BenchPolicy) -> None:
        self.__init__(self.hold_on_suspicion)  # type: ignore[misc]
        self.policy = policy

    def _rollout(self, data: IntervalData) -> ModelRollout:
        if self.rollout is None:
            default = [1, 5, 10, 25, 50]
            steps = (
                default
                if data.n_steps == len(default)
                else [round(50 * (i + 1) / data.n_steps) for i in range(data.n_steps)]
            )
            self.rollout = benchmark_rollout(self.policy, steps, self.hold_on_suspicion)
        return self.rollout

    def _add(self, side: int, version: VersionInterval) -> None:
        usable = not version.reset
        counts = version.raw
        self.requests[side].append(counts.requests if usable else None)
        self.errors[side].append(counts.errors if usable else None)
        self.labelled[side].append(counts.labelled if usable else None)
        self.correct[side].append(counts.correct if usable else None)
        cumulative = tuple(float(c) for c in counts.buckets.cumsum())
        self.buckets[side].append(cumulative if usable else None)

    def decide(self, data: IntervalData) -> Verdict:
        rollout = self._rollout(data)
        start = data.end_s - data.interval_s
        self.windows.append(Window(start, data.end_s, data.weight / 100.0))
        self._add(0, data.stable)
        self._add(1, data.canary)
        if self.status.phase is Phase.INITIALIZING:
            self.status = decide(rollout, self.status, None, start).status  # routes in place at the start
        observation = Observation(
            windows=tuple(self.windows),
            stable_requests=tuple(self.requests[0]),
            canary_requests=tuple(self.requests[1]),
            metrics=(
                MetricData("latency", HistogramSeries(EDGES_S, tuple(self.buckets[0]), tuple(self.buckets[1]))),
                MetricData("errors", _counts(self.errors, self.requests)),
                MetricData("accuracy", _counts(self.correct, self.labelled)),
            ),
        )
        evidence = analyse(rollout, observation, step_started_at=self.status.step_started_at)
        decision = decide(rollout, self.status, evidence, data.end_s)
        self.status = decision.status
        if decision.action is Action.ROLLBACK:
            return Verdict.ROLLBACK
        if decision.action is Action.PROMOTE:
            return Verdict.PROMOTE
        if decision.action is Action.ADVANCE:
            return Verdict.ADVANCE
        return Verdict.CONTINUE


def _counts(
    events: tuple[list[int | None], list[int | None]], trials: tuple[list[int | None], list[int | None]]
) -> CountSeries:
    return CountSeries(tuple(events[0]), tuple(trials[0]), tuple(events[1]), tuple(trials[1]))


def make_engine(truth: Truth, hold_on_suspicion: str = HOLD_ON_SUSPICION) -> CanaristEngine:
    """The harness's factory; ``truth`` is ignored (only the oracle may know it)."""
    del truth
    return CanaristEngine(hold_on_suspicion)
