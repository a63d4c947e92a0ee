"""``canarist demo`` with the versions served by real Tritons (``--serving triton``): the gate runs first.

Each version is served by its own Triton (the demo's fraud model in the Python backend), behind the
model server that plays its pod's sidecar; the rollout has a pre-traffic gate on the two Tritons.
Triton's own ``nv_inference_count`` says what each version served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.sandbox.demo.run import DemoOptions, run_demo
from controller.sandbox.demo.scenarios import CANARY, SCENARIOS, STABLE
from tests.demo.test_demo import RATE, SPEED, common_checks, gone


def gate_condition(rollout: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in rollout["status"]["conditions"] if c["type"] == "GatePassed")


def test_a_good_canary_served_by_triton_passes_the_gate_and_is_promoted(tmp_path: Path) -> None:
    options = DemoOptions(SCENARIOS["good"], speed=SPEED, rate=RATE, seed=1, out=tmp_path / "r", serving="triton")
    result = run_demo(options)
    assert result.phase == "Succeeded", result.reason
    assert gate_condition(result.rollout)["status"] == "True"
    history = result.rollout["status"]["history"]
    assert history[0]["reason"] == "routes in place: analysing step 0; gate passed"
    assert result.triton_inferences is not None
    assert result.triton_inferences[STABLE] > 1000 and result.triton_inferences[CANARY] > 500, result.triton_inferences
    # every answered request was scored by a Triton (the gate's golden request is one more)
    assert sum(result.triton_inferences.values()) >= 0.98 * result.loadgen["sent"], (
        result.triton_inferences,
        result.loadgen,
    )
    # the outputs compared are the scores each Triton exported itself (Python backend, HISTOGRAM kind)
    predictions = next(m for m in result.rollout["status"]["metrics"] if m["name"] == "predictions")
    assert predictions["verdict"] == "Pass", predictions
    assert "fraud_score" in result.rollout["spec"]["analysis"]["metrics"][-1]["outputs"]["histogram"]
    common_checks(result)


def test_a_canary_whose_output_changed_is_refused_by_the_gate_and_gets_no_request(tmp_path: Path) -> None:
    options = DemoOptions(SCENARIOS["bad-signature"], speed=SPEED, rate=RATE, seed=1, out=tmp_path / "r")
    result = run_demo(options)
    assert result.phase == "Failed", result.reason
    assert result.reason == "gate failed: signature differs from the stable's: output 'score' is missing"
    assert gate_condition(result.rollout)["reason"] == "Failed"
    inferences = result.triton_inferences or {}
    assert inferences.get(CANARY) == 0 and inferences.get(STABLE, 0) > 1000, inferences
    assert all(split.weights.get(CANARY, 0) == 0 and split.served.get(CANARY, 0) == 0 for split in result.splits)
    assert result.routing_failures == 0 and result.pids and all(gone(pid) for pid in result.pids)
    assert [t["action"] for t in result.rollout["status"]["history"]] == ["Rollback", "Complete"]
