"""``python -m bench.shards``: sharded controller replicas at scale, one killed mid-run.

``--replicas`` real ``canarist run --shards`` processes share ``--rollouts`` rollouts over
``--shards`` shard Leases of the local API stand-in; live Istio request counters for every rollout
(the split following its stored VirtualService) are scraped every second by Debian's Prometheus;
``--kill-after`` seconds in, the replica holding the most shards is killed with SIGKILL. Every
write is judged as it is stored (controller/sandbox/chaos/shardsoak.py): a rollout or its routes
written only while the stored Lease of the rollout's shard names the writer and its term is not
over, a shard handed over only after its holder's term. Writes ``bench/results/shards.json``:
the phases at the end (all Succeeded), the violations (none), how many shards the killed replica
held and how many of its rollouts the others finished, the writes per replica, the wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from controller.sandbox.chaos.shardsoak import ShardSoakConfig, run_shard_soak

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "shards.json"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", type=int, default=300)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--interval", type=int, default=10, help="each rollout's analysis interval, seconds")
    ap.add_argument("--kill-after", type=float, default=40.0, help="seconds before the busiest replica is killed")
    ap.add_argument("--deadline", type=float, default=900.0)
    ap.add_argument("--rps", type=int, default=200, help="requests per second per rollout")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.rollouts < 1 or args.replicas < 2 or args.shards < 1:
        ap.error("--rollouts and --shards at least 1, --replicas at least 2 (one is killed)")
    config = ShardSoakConfig(
        rollouts=args.rollouts, replicas=args.replicas, shards=args.shards, interval_s=args.interval,
        kill_after_s=args.kill_after, deadline_s=args.deadline, rps=args.rps, seed=args.seed,
    )  # fmt: skip
    result = run_shard_soak(config)
    summary = {**result.summary(), "passed": result.passed, "first_violations": result.violations[:20]}
    summary["settings"] = {"interval_s": args.interval, "kill_after_s": args.kill_after, "rps": args.rps}
    summary["python"] = platform.python_version()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if not result.passed:
        for who, text in result.logs.items():
            print(f"--- {who}\n{text[-3000:]}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
