"""``python -m bench.chaos``: whole rollouts through a faulty Kubernetes API and controller crashes.

N rollouts (good, regressing and SLO-breaching canaries in turn; a third on the user's own routes)
in runs of ``--per-run`` on one local API stand-in each, every run with its own seed (``--seed``,
then +1 per run): the seeded fault schedule of :mod:`controller.sandbox.chaos.faults` on every
request, a controller crash before an edge call with probability ``--crash-rate``, workload events
(:mod:`controller.sandbox.chaos.workload`: pods flapping, a new canary, policy edits, steering
commands, deletion, istiod slow to report) with probability ``--workload-rate``, the invariants
of :mod:`controller.sandbox.chaos.invariants` checked on every write the API stores, outcomes judged
against each canary's truth (a deleted rollout only by its release), and every rollout deleted at
the end (its adopted routes must be the user's again). The extra time the faults cost: each
rollout's virtual minutes to its end against the same run without faults, crashes or workload
events, one controller. Writes ``bench/results/chaos.json``; exits 1 on any violation, wrong
outcome, unfinished rollout or unrestored object.

``--replicas`` 2 or more: that many controllers share one Lease, stall past it and take over
(:mod:`controller.sandbox.chaos.replicas`), and no write may come from one the Lease does not name.

``--prometheus``: each run's metrics through the real Prometheus edge instead, from a real
Prometheus behind the seeded fault proxy (:mod:`controller.sandbox.chaos.promsoak`), in real time
with an analysis interval of ``--interval`` seconds (counted as the policy's minute in the extra
time); the proxy's faults are counted as ``prometheus-<kind>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.harness import quantile
from controller.sandbox.chaos.faults import FaultKind
from controller.sandbox.chaos.promproxy import ProxyFault
from controller.sandbox.chaos.promsoak import PREFIX, PrometheusEdge
from controller.sandbox.chaos.soak import SoakConfig, SoakResult, run_soak
from controller.sandbox.chaos.workload import RESUME, WorkloadKind

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "chaos.json"
#: Every kind counted, the API's faults first, then the workload's (a resume follows a pause).
FAULT_KINDS = (*(k.value for k in FaultKind), *(k.value for k in WorkloadKind), RESUME)


def baseline(config: SoakConfig, cache: dict[tuple[int, int], SoakResult]) -> SoakResult:
    """The same rollouts without faults, crashes, workload events or stalls, one controller (they
    depend on the seed only modulo 3)."""
    key = (config.rollouts, config.seed % 3)
    if key not in cache:
        metrics = replace(config.metrics, fault_rate=0.0) if config.metrics else None
        calm = replace(
            config,
            seed=key[1],
            fault_rate=0.0,
            crash_rate=0.0,
            watch_every=0,
            workload_rate=0.0,
            replicas=1,
            metrics=metrics,
        )
        cache[key] = run_soak(calm)
    return cache[key]


def extra_minutes(result: SoakResult, calm: SoakResult) -> list[float]:
    """Per rollout that ended in both: virtual minutes to its end beyond the calm run's (through
    Prometheus: intervals, each counted as the policy's minute)."""
    scale = 60 / result.config.metrics.interval if result.config.metrics else 1.0
    return [
        (result.minutes_to_end[key] - calm.minutes_to_end[key]) * scale
        for key in result.minutes_to_end
        if key in calm.minutes_to_end
    ]


def summary(results: Sequence[SoakResult], extra: Sequence[float], calm_seconds: float) -> dict[str, Any]:
    faults: Counter[str] = Counter()
    for result in results:
        faults.update(result.faults)
    kinds = list(FAULT_KINDS)
    if any(r.config.metrics for r in results):
        kinds += [f"{PREFIX}{k}" for k in ProxyFault]
    lines = {
        name: [line for r in results for line in getattr(r, name)]
        for name in ("violations", "wrong_outcomes", "unfinished", "not_restored")
    }
    breach = [seconds for r in results for seconds in r.breach_seconds.values()]
    return {
        "runs": len(results),
        "rollouts": sum(len(r.truths) for r in results),
        "truths": dict(Counter(t for r in results for t in r.truths.values())),
        "adopted": sum(len(r.adopted) for r in results),
        "faults": {kind: faults.get(kind, 0) for kind in kinds},
        "faults_total": sum(faults.values()),
        "restarts": sum(r.restarts for r in results),
        "lease_transitions": sum(r.lease_transitions for r in results),
        "stalls": sum(r.stalls for r in results),
        "writes_checked": sum(r.writes_checked for r in results),
        **{name: len(found) for name, found in lines.items()},
        "extra_minutes": spread(extra),
        "slo_breach_rollback_seconds": spread(breach),
        "seconds": {"with_faults": round(sum(r.seconds for r in results), 1), "without": round(calm_seconds, 1)},
        "found": {name: found for name, found in lines.items() if found},
    }


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, 90th percentile (:func:`bench.harness.quantile`) and maximum (None for no values)."""
    if not values:
        return dict.fromkeys(("mean", "p90", "max"))
    return {
        "mean": round(statistics.fmean(values), 2),
        "p90": quantile(values, 90, digits=2),
        "max": round(max(values), 2),
    }


def table(totals: dict[str, Any]) -> str:
    extra, breach, seconds = totals["extra_minutes"], totals["slo_breach_rollback_seconds"], totals["seconds"]
    rows = [
        ("runs", totals["runs"]),
        ("rollouts", f"{totals['rollouts']} ({', '.join(f'{n} {t}' for t, n in sorted(totals['truths'].items()))};"
                     f" {totals['adopted']} on adopted routes)"),
        ("faults injected", totals["faults_total"]),
        *((f"  {kind}", n) for kind, n in totals["faults"].items()),
        ("controller restarts", totals["restarts"]),
        ("lease take-overs / replica stalls", f"{totals['lease_transitions']} / {totals['stalls']}"),
        ("writes checked", totals["writes_checked"]),
        ("invariant violations (must be 0)", totals["violations"]),
        ("wrong outcomes (must be 0)", totals["wrong_outcomes"]),
        ("unfinished rollouts", totals["unfinished"]),
        ("deleted, not restored", totals["not_restored"]),
        ("extra virtual minutes to the end", f"mean {extra['mean']}, p90 {extra['p90']}, max {extra['max']}"),
        ("SLO breach readable -> rollback (s)", f"mean {breach['mean']}, p90 {breach['p90']}, max {breach['max']}"),
        ("wall seconds (with faults / without)", f"{seconds['with_faults']} / {seconds['without']}"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", type=int, default=60, help="rollouts in all (default: %(default)s)")
    ap.add_argument("--per-run", type=int, default=6, help="rollouts per run, on one API server (default: 6)")
    ap.add_argument("--seed", type=int, default=0, help="the first run's seed; each next run +1 (default: 0)")
    ap.add_argument("--fault-rate", type=float, default=0.1, help="faults per request (default: %(default)s)")
    ap.add_argument("--crash-rate", type=float, default=0.02, help="crashes per edge call (default: %(default)s)")
    ap.add_argument(
        "--workload-rate",
        type=float,
        default=0.0,
        help="workload events per pass, and istiod's late reports per Istio write (default: %(default)s)",
    )
    ap.add_argument("--watch-every", type=int, default=4, help="passes between watches (default: %(default)s)")
    ap.add_argument(
        "--prometheus",
        action="store_true",
        help="metrics through the real Prometheus edge: a real Prometheus behind a seeded fault proxy, in real time",
    )
    ap.add_argument("--prometheus-rate", type=float, default=0.2, help="queries the proxy breaks (default: 0.2)")
    ap.add_argument("--interval", type=float, default=1.0, help="with --prometheus: seconds per interval (default: 1)")
    ap.add_argument("--replicas", type=int, default=1, help="controllers on one Lease (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: bench/results/chaos.json)")
    args = ap.parse_args(argv)
    logging.getLogger("canarist").setLevel(logging.CRITICAL)  # every fault is a warning: thousands of lines
    began = time.time()
    results: list[SoakResult] = []
    extra: list[float] = []
    calm_seconds, cache = 0.0, dict[tuple[int, int], SoakResult]()
    remaining, seed = args.rollouts, args.seed
    metrics = PrometheusEdge(fault_rate=args.prometheus_rate, interval=args.interval) if args.prometheus else None
    while remaining > 0:
        config = SoakConfig(
            rollouts=min(args.per_run, remaining),
            seed=seed,
            fault_rate=args.fault_rate,
            crash_rate=args.crash_rate,
            watch_every=args.watch_every,
            workload_rate=args.workload_rate,
            replicas=args.replicas,
        )
        if metrics is not None:  # real time: a pass every quarter second, at most 3 minutes
            config = replace(config, metrics=metrics, tick=0.25, minutes=3.0)
        result = run_soak(config)
        calm = baseline(config, cache)
        results.append(result)
        extra += extra_minutes(result, calm)
        calm_seconds += calm.seconds
        bad = len(result.violations) + len(result.wrong_outcomes) + len(result.unfinished) + len(result.not_restored)
        print(
            f"seed {seed}: {sum(result.faults.values())} faults, {result.restarts} restarts, {bad} problems", flush=True
        )
        remaining, seed = remaining - config.rollouts, seed + 1
    totals = summary(results, extra, calm_seconds)
    print()
    print(table(totals))
    for name, found in totals["found"].items():
        print(f"\n{name}:")
        print("\n".join(f"  {line}" for line in found))
    record = {
        "command": " ".join(["python -m bench.chaos", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "seconds": round(time.time() - began, 1),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "totals": totals,
        "runs": [
            {
                "seed": r.config.seed,
                "rollouts": len(r.truths),
                "faults": dict(r.faults),
                "restarts": r.restarts,
                "lease_transitions": r.lease_transitions,
                "stalls": r.stalls,
                "writes_checked": r.writes_checked,
                "phases": r.phases,
                "minutes_to_end": {k: round(v, 2) for k, v in r.minutes_to_end.items()},
                "slo_breach_rollback_seconds": r.breach_seconds,
                "seconds": round(r.seconds, 1),
            }
            for r in results
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 1 if any(totals[k] for k in ("violations", "wrong_outcomes", "unfinished", "not_restored")) else 0


if __name__ == "__main__":
    sys.exit(main())
