"""``python -m bench``: simulate rollouts and run every engine on the same traffic; write bench/results/."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import report
from bench.engines import engine_factories, oracle
from bench.engines.base import BenchPolicy
from bench.engines.canarist import HOLD_ON_SUSPICION, MIN_REQUESTS
from bench.harness import EngineOptions, Unit, default_jobs, rollback_curves, run_all, summarise
from bench.simulate import SCENARIOS, SimConfig

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
FULL_RUNS = (2000, 500)  # aa, each regression scenario
QUICK_RUNS = (200, 100)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _delay(text: str) -> tuple[int, int]:
    parts = [int(x) for x in text.split(",")]
    if len(parts) == 1:
        return (parts[0], parts[0])
    if len(parts) != 2:
        raise argparse.ArgumentTypeError("give MIN,MAX intervals")
    return (parts[0], parts[1])


#: Baselines canarist is also run against at their own measured A/A false-rollback rate.
MATCHED_BASELINES = ("kayenta", "fixed")


def matched_alphas(
    records: Sequence[dict[str, Any]], engines: Sequence[str], scenarios: Sequence[str]
) -> dict[str, float]:
    """Each matched baseline's A/A rollback rate, where this run measured one and canarist ran.

    Only rates in (0, 0.5]: a policy's alpha is at most 0.5 (a judge that rolls back most identical
    canaries has no question worth matching).
    """
    if "canarist" not in engines or "aa" not in scenarios:
        return {}
    rates = {r["engine"]: r["rollback_rate"] for r in records if r["scenario"] == "aa"}
    return {b: float(rates[b]) for b in MATCHED_BASELINES if 0.0 < rates.get(b, 0.0) <= 0.5}


def matched_policy(policy: BenchPolicy, alpha: float) -> BenchPolicy:
    """The baselines' question (worse than stable at all: margins 0) at their false-rollback rate."""
    return replace(policy, alpha=alpha, latency_margin_rel=0.0, error_margin_abs=0.0, accuracy_margin_abs=0.0)


def parser() -> argparse.ArgumentParser:
    d, p = SimConfig(), BenchPolicy()
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="200 aa runs and 100 per regression scenario")
    ap.add_argument("--runs", type=int, help="runs per scenario (default: 2000 for aa, 500 per regression)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engines", type=_names, help="comma-separated; default: every available engine")
    ap.add_argument("--scenarios", type=_names, help=f"comma-separated; default: {','.join(SCENARIOS)}")
    ap.add_argument("--jobs", type=int, default=default_jobs(), help="worker processes (default: CPU count)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: bench/results)")
    sim = ap.add_argument_group("simulator")
    sim.add_argument("--rps", type=float, default=d.rps, help="mean requests per second, both versions")
    sim.add_argument("--diurnal-amplitude", type=float, default=d.diurnal_amplitude)
    sim.add_argument("--diurnal-period", type=float, default=d.diurnal_period_s, help="seconds")
    sim.add_argument("--steps", type=_floats, default=d.steps, help="canary weights %%, e.g. 1,5,10,25,50")
    sim.add_argument("--interval", type=float, default=d.interval_s, help="analysis interval, seconds")
    sim.add_argument("--scrape", type=float, default=d.scrape_s, help="scrape interval, seconds")
    sim.add_argument("--p-missed-scrape", type=float, default=d.p_missed_scrape)
    sim.add_argument("--p-reset", type=float, default=d.p_reset, help="counter reset per interval and version")
    sim.add_argument("--latency-median", type=float, default=d.latency_median_ms, help="stable median, ms")
    sim.add_argument("--latency-sigma", type=float, default=d.latency_sigma, help="lognormal sigma")
    sim.add_argument("--error-rate", type=float, default=d.error_rate)
    sim.add_argument("--accuracy", type=float, default=d.accuracy)
    sim.add_argument("--label-fraction", type=float, default=d.label_fraction)
    sim.add_argument("--label-delay", type=_delay, default=d.label_delay, help="MIN,MAX intervals")
    sim.add_argument("--gpu-pods", type=int, default=d.gpu_pods, help="pods per version")
    sim.add_argument("--gpu-phi", type=float, default=d.gpu_phi)
    sim.add_argument("--gpu-mean", type=float, default=d.gpu_mean)
    sim.add_argument("--gpu-sd", type=float, default=d.gpu_sd)
    pol = ap.add_argument_group("policy and engines")
    pol.add_argument("--alpha", type=float, default=p.alpha)
    pol.add_argument("--deadline", type=float, default=p.deadline_s, help="progress deadline, seconds")
    pol.add_argument("--step-intervals", type=int, default=p.step_intervals, help="intervals per step (baselines)")
    pol.add_argument("--flagger-threshold", type=int, default=5, help="failed checks before Flagger rolls back")
    pol.add_argument("--kayenta-min-points", type=int, default=2, help="points per side before Kayenta judges")
    pol.add_argument(
        "--hold-on-suspicion",
        default=HOLD_ON_SUSPICION,
        help="canarist's holdOnSuspicion, a duration (0s: advance on 'no harm' at once)",
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started = time.perf_counter()
    config = SimConfig(
        rps=args.rps,
        diurnal_amplitude=args.diurnal_amplitude,
        diurnal_period_s=args.diurnal_period,
        steps=args.steps,
        interval_s=args.interval,
        scrape_s=args.scrape,
        p_missed_scrape=args.p_missed_scrape,
        p_reset=args.p_reset,
        latency_median_ms=args.latency_median,
        latency_sigma=args.latency_sigma,
        error_rate=args.error_rate,
        accuracy=args.accuracy,
        label_fraction=args.label_fraction,
        label_delay=args.label_delay,
        gpu_pods=args.gpu_pods,
        gpu_phi=args.gpu_phi,
        gpu_mean=args.gpu_mean,
        gpu_sd=args.gpu_sd,
    )
    policy = BenchPolicy(alpha=args.alpha, deadline_s=args.deadline, step_intervals=args.step_intervals)
    options = EngineOptions(args.flagger_threshold, args.kayenta_min_points, args.hold_on_suspicion)
    available = list(engine_factories(options.flagger_threshold, options.kayenta_min_points))
    engines = args.engines or available
    scenarios = args.scenarios or list(SCENARIOS)
    for name in engines:
        if name not in available:
            print(f"unknown engine {name!r}; available: {', '.join(available)}", file=sys.stderr)
            return 2
    for name in scenarios:
        if name not in SCENARIOS:
            print(f"unknown scenario {name!r}; available: {', '.join(SCENARIOS)}", file=sys.stderr)
            return 2
    runs_aa, runs_bad = QUICK_RUNS if args.quick else FULL_RUNS
    if args.runs is not None:
        runs_aa = runs_bad = args.runs
    runs = {s: runs_aa if s == "aa" else runs_bad for s in scenarios}
    units = [Unit(s, r, args.seed, tuple(engines), config, policy, options) for s in scenarios for r in range(runs[s])]
    print(f"{len(units)} rollouts x {len(engines)} engines ({', '.join(engines)}) on {args.jobs} job(s)", flush=True)
    outcomes = run_all(units, args.jobs)
    records = summarise(outcomes, config.interval_s, engines, scenarios)
    matched = matched_alphas(records, engines, scenarios)
    if matched:
        names = ", ".join(f"canarist@{b} (alpha {a:g})" for b, a in matched.items())
        # A/A runs as many as a regression scenario's: a margin-0 A/A canary is never promoted, so each
        # runs to the deadline, and its rate is a check on a guarantee the unit tests already hold
        extra = [
            replace(unit, engines=("canarist",), policy=matched_policy(policy, alpha), label=f"canarist@{baseline}")
            for baseline, alpha in matched.items()
            for unit in units
            if unit.scenario != "aa" or unit.run < runs_bad
        ]
        print(f"{len(extra)} rollouts of {names}", flush=True)
        outcomes += run_all(extra, args.jobs)
    labels = [*engines, *(f"canarist@{b}" for b in matched)]
    records = summarise(outcomes, config.interval_s, labels, scenarios)
    wall = time.perf_counter() - started
    simulator = {
        **config.as_dict(),
        "scenarios": {s: SCENARIOS[s].description for s in scenarios},
        "seed": args.seed,
        "runs": runs,
        "wall_s": round(wall, 1),
    }
    policy_doc = {
        **policy.as_dict(),
        "engines": engines,
        "engine_parameters": {
            "flagger": {"threshold": options.flagger_threshold, "thresholds": "the SLO"},
            "kayenta": {
                "confidence": 0.98,
                "tolerance": 0.25,
                "min_points": options.kayenta_min_points,
                "scores": {"pass": 95, "marginal": 75},
            },
            "naive-mwu": {"tests": "binned Mann-Whitney + two-proportion z, one-sided, each at alpha/3, every look"},
            "fixed": {"tests": "as naive-mwu, once after the last step"},
            "oracle-sprt": {"beta": oracle.BETA, "h0": "canary = stable"},
            "oracle-sprt-margin": {"beta": oracle.BETA, "h0": "canary = stable shifted by the policy's margins"},
            "canarist": {"holdOnSuspicion": options.canarist_hold, "minRequests": MIN_REQUESTS},
        },
    }
    document = {"policy": policy_doc, "simulator": simulator, "results": records, "matched": matched}
    written = report.write(args.out, document, rollback_curves(outcomes), labels, scenarios)
    print(report.markdown_table(records))
    print(f"wrote {', '.join(str(p) for p in written)} in {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
