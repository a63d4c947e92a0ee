"""``python -m bench.gpu`` in short, seeded: on shared GPUs only per-pod attribution judges GPU cost right."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bench import gpu


def rates(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(str(r["judge"]), str(r["scenario"])): r for r in records}


def test_the_agents_attribution_decides_right_and_device_wide_series_do_not() -> None:
    runs = 60
    got = rates(gpu.run(runs, seed=11))
    at_margin = 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)  # alpha and three standard errors
    assert got[("agent", "aa")]["promote_rate"] >= 0.95
    assert got[("agent", "cost-x2")]["rollback_rate"] >= 0.95
    assert got[("agent", "at-margin-x1.25")]["rollback_rate"] <= at_margin  # type-I at the margin
    assert got[("agent", "at-margin-x1.25")]["promote_rate"] <= at_margin
    # Device-wide values taken as the pods' own: an equal canary on a shared GPU looks costlier.
    assert got[("dcgm-per-pod", "aa")]["rollback_rate"] >= 0.9
    # Dropped as not attributable: no decision either way, never a wrong one.
    for scenario in gpu.SCENARIOS:
        assert got[("dcgm-attributed", scenario)]["undecided_rate"] == 1.0


def test_the_simulation_has_the_costs_it_says() -> None:
    minutes = gpu.simulate(np.random.default_rng(3), ratio=2.0)
    stable = sum(m.stable_seconds.sum() for m in minutes) / sum(m.stable_requests.sum() for m in minutes)
    canary = sum(m.canary_seconds.sum() for m in minutes) / sum(m.canary_requests.sum() for m in minutes)
    assert abs(stable / gpu.COST - 1) < 0.03 and abs(canary / stable - 2.0) < 0.1
    share = sum(m.canary_requests.sum() for m in minutes) / sum(
        m.canary_requests.sum() + m.stable_requests.sum() for m in minutes
    )
    assert abs(share - gpu.CANARY_SHARE) < 0.01


def test_the_command_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    assert gpu.main(["--runs", "3", "--seed", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["runs"] == 3
    assert {(r["judge"], r["scenario"]) for r in result["results"]} == {
        (j, s) for j in gpu.JUDGES for s in gpu.SCENARIOS
    }
