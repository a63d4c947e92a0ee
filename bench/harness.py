"""The harness: run every engine on the same simulated rollouts and summarise what each decided.

A unit of work is one (scenario, run): its traffic is drawn once and every engine replays it under its
own decisions (common random numbers). Units run in parallel over processes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.engines import ORACLE, ORACLE_MARGIN, engine_factories
from bench.engines.base import BenchPolicy, Engine, Verdict
from bench.engines.canarist import HOLD_ON_SUSPICION
from bench.simulate import SCENARIOS, Rollout, RunTraffic, Served, SimConfig
from bench.stats import clopper_pearson

ROLLBACK = "rollback"
PROMOTE = "promote"
UNDECIDED = "undecided"


@dataclass(frozen=True)
class Outcome:
    """How one engine's rollout ended: ``decision``, after ``intervals``, with ``canary_requests`` served.

    ``harm_requests``: the requests the canary served within the progress deadline's horizon, the
    ones after a promotion included (then it serves every request): what a bad canary costs users
    over the same two hours whatever the engine decided. Defaults to ``canary_requests``.
    """

    engine: str
    scenario: str
    run: int
    decision: str
    intervals: int
    canary_requests: int
    harm_requests: int | None = None

    @property
    def harm(self) -> int:
        return self.canary_requests if self.harm_requests is None else self.harm_requests


@dataclass(frozen=True)
class EngineOptions:
    flagger_threshold: int = 5
    kayenta_min_points: int = 2
    canarist_hold: str = HOLD_ON_SUSPICION


def run_rollout(
    engine: Engine,
    traffic: RunTraffic,
    policy: BenchPolicy,
    trace: list[Served] | None = None,
) -> tuple[str, int, int]:
    """One rollout of ``engine`` over ``traffic``: (decision, intervals, canary requests served)."""
    config = traffic.config
    steps = config.steps
    rollout = Rollout(traffic)
    engine.reset(policy)
    step = 0
    canary_requests = 0
    max_intervals = horizon_intervals(policy, config)
    for t in range(max_intervals):
        data, served = rollout.step(steps[step], step, len(steps))
        canary_requests += served.canary
        if trace is not None:
            trace.append(served)
        verdict = engine.decide(data)
        if not isinstance(verdict, Verdict):
            raise TypeError(f"{engine.name} returned {verdict!r}, not a Verdict")
        if verdict is Verdict.ROLLBACK:
            return ROLLBACK, t + 1, canary_requests
        if verdict is Verdict.PROMOTE or (verdict is Verdict.ADVANCE and step == len(steps) - 1):
            return PROMOTE, t + 1, canary_requests
        if verdict is Verdict.ADVANCE:
            step += 1
    return UNDECIDED, max_intervals, canary_requests


@dataclass(frozen=True)
class Unit:
    scenario: str
    run: int
    seed: int
    engines: tuple[str, ...]
    config: SimConfig
    policy: BenchPolicy
    options: EngineOptions
    label: str = ""  # the engine's name in the results, when it runs under another policy


def horizon_intervals(policy: BenchPolicy, config: SimConfig) -> int:
    """Intervals in the progress deadline: a rollout's horizon."""
    return max(1, math.floor(policy.deadline_s / config.interval_s + 1e-9))


def served_after(traffic: RunTraffic, policy: BenchPolicy, intervals: int) -> int:
    """Expected requests of every version from interval ``intervals`` to the horizon's end."""
    end = horizon_intervals(policy, traffic.config)
    return round(sum(traffic.rate(t) * traffic.config.interval_s for t in range(intervals, end)))


def run_unit(unit: Unit) -> list[Outcome]:
    """Every engine on one (scenario, run), all on the same traffic."""
    traffic = RunTraffic(unit.config, SCENARIOS[unit.scenario], unit.seed, unit.run)
    options = unit.options
    factories = engine_factories(options.flagger_threshold, options.kayenta_min_points, options.canarist_hold)
    outcomes = []
    for name in unit.engines:
        engine = factories[name](traffic.truth)
        decision, intervals, requests = run_rollout(engine, traffic, unit.policy)
        harm = requests + (served_after(traffic, unit.policy, intervals) if decision == PROMOTE else 0)
        outcomes.append(Outcome(unit.label or name, unit.scenario, unit.run, decision, intervals, requests, harm))
    return outcomes


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_all(units: Sequence[Unit], jobs: int) -> list[Outcome]:
    """Run every unit, over ``jobs`` processes (in this process when 1)."""
    outcomes: list[Outcome] = []
    if jobs <= 1 or len(units) <= 1:
        for unit in units:
            outcomes.extend(run_unit(unit))
        return outcomes
    chunk = max(1, len(units) // (jobs * 16))
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for result in pool.imap_unordered(run_unit, units, chunksize=chunk):
            outcomes.extend(result)
    return outcomes


# --- summaries --------------------------------------------------------------------------------

RECORD_KEYS = (
    "engine",
    "scenario",
    "runs",
    "rollback_rate",
    "rollback_rate_ci95",
    "promote_rate",
    "median_canary_requests_to_rollback",
    "p90_canary_requests_to_rollback",
    "median_harm_requests",
    "mean_harm_requests",
    "median_minutes_to_decision",
    "ratio_to_oracle",
    "ratio_to_margin_oracle",
)


def quantile(values: Iterable[float], q: float, *, digits: int = 1) -> float | None:
    """The ``q``-th percentile (linear interpolation, as numpy's default), rounded; None for no values.
    The one percentile of every benchmark."""
    data = list(values)
    return round(float(np.percentile(data, q)), digits) if data else None


def summarise(
    outcomes: Sequence[Outcome], interval_s: float, engines: Sequence[str], scenarios: Sequence[str]
) -> list[dict[str, Any]]:
    """One record per (engine, scenario) with exactly :data:`RECORD_KEYS`, by scenario then engine order."""
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for o in sorted(outcomes, key=lambda o: (scenarios.index(o.scenario), engines.index(o.engine), o.run)):
        groups.setdefault((o.engine, o.scenario), []).append(o)
    records: list[dict[str, Any]] = []
    for (engine, scenario), runs in groups.items():
        n = len(runs)
        rolled = [o for o in runs if o.decision == ROLLBACK]
        promoted = sum(o.decision == PROMOTE for o in runs)
        decided = [o for o in runs if o.decision != UNDECIDED]
        lo, hi = clopper_pearson(len(rolled), n)
        harm = None if scenario == "aa" else quantile((o.harm for o in runs), 50)
        mean_harm = None if scenario == "aa" else round(float(np.mean([o.harm for o in runs])), 1)
        records.append(
            {
                "engine": engine,
                "scenario": scenario,
                "runs": n,
                "rollback_rate": round(len(rolled) / n, 4),
                "rollback_rate_ci95": [round(lo, 4), round(hi, 4)],
                "promote_rate": round(promoted / n, 4),
                "median_canary_requests_to_rollback": quantile((o.canary_requests for o in rolled), 50),
                "p90_canary_requests_to_rollback": quantile((o.canary_requests for o in rolled), 90),
                "median_harm_requests": harm,
                "mean_harm_requests": mean_harm,
                "median_minutes_to_decision": quantile((o.intervals * interval_s / 60 for o in decided), 50),
                "ratio_to_oracle": None,
                "ratio_to_margin_oracle": None,
            }
        )
    for key, limit in (("ratio_to_oracle", ORACLE), ("ratio_to_margin_oracle", ORACLE_MARGIN)):
        oracle = {r["scenario"]: r["median_canary_requests_to_rollback"] for r in records if r["engine"] == limit}
        for r in records:
            base = oracle.get(r["scenario"])
            mine = r["median_canary_requests_to_rollback"]
            if r["scenario"] != "aa" and base and mine is not None:
                r[key] = round(mine / base, 2)
    return records


def rollback_curves(outcomes: Sequence[Outcome]) -> dict[tuple[str, str], tuple[list[int], int]]:
    """Per (engine, scenario): sorted canary requests at each rollback, and the number of runs."""
    curves: dict[tuple[str, str], tuple[list[int], int]] = {}
    for o in outcomes:
        rolled, runs = curves.get((o.engine, o.scenario), ([], 0))
        if o.decision == ROLLBACK:
            rolled.append(o.canary_requests)
        curves[(o.engine, o.scenario)] = (rolled, runs + 1)
    return {key: (sorted(rolled), runs) for key, (rolled, runs) in curves.items()}
