"""The demo's live view: what it shows from a stored rollout, on a terminal and in a log."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from controller.api.times import timestamp
from controller.sandbox.demo.scenarios import SCENARIOS, demo_policy
from controller.sandbox.demo.view import BAR, LiveView, evidence_bar, frame

T0 = 1_800_000_000.0


def stored(phase: str = "Progressing", step: int = 1, weight: int = 25) -> dict[str, Any]:
    def metric(name: str, verdict: str, harm: float, proof: float, estimate: float | None) -> dict[str, Any]:
        return {
            "name": name,
            "verdict": verdict,
            "reason": f"{name} reason",
            "eValue": harm,
            "eValueNonInferiority": proof,
            "threshold": 60.0,
            "estimate": estimate,
            "interval": [-0.01, 0.02] if estimate is not None else None,
            "requests": {"stable": 9000, "canary": 3000},
        }

    history = [
        {"at": timestamp(T0), "fromPhase": "Initializing", "toPhase": "Progressing", "fromStep": 0, "toStep": 0,
         "action": "Start", "reason": "routes in place: analysing step 0"},
        {"at": timestamp(T0 + 20), "fromPhase": "Progressing", "toPhase": "Progressing", "fromStep": 0, "toStep": 1,
         "action": "Advance", "reason": "no harm detected: step 1 (25%)"},
    ]  # fmt: skip
    return {
        **demo_policy(),
        "status": {
            "phase": phase,
            "currentStep": step,
            "canaryWeight": weight,
            "message": "holding: inconclusive: accuracy",
            "metrics": [
                metric("latency-p90", "Pass", 0.01, 1e40, -0.02),
                metric("error-rate", "Inconclusive", 0.7, 7.7, 0.0),
                metric("accuracy", "Fail", 3600.0, 0.02, -0.08),
            ],
            "history": history,
        },
    }


def text(renderable: Any, width: int = 110) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize(
    ("e_value", "filled"),
    [(None, 0), (0.5, 0), (1.0, 0), (60.0**0.5, BAR // 2), (60.0, BAR), (1e300, BAR)],
)
def test_the_evidence_bar_fills_on_the_log_scale(e_value: float | None, filled: int) -> None:
    bar = evidence_bar(e_value, 60.0).plain
    assert len(bar) == BAR and bar.count("█") == filled


def test_a_frame_shows_step_weights_requests_evidence_and_decisions() -> None:
    shown = text(frame(stored(), {"v1": 9000, "v2": 3000}, SCENARIOS["accuracy"], started=T0, now=T0 + 42))
    assert "scenario accuracy" in shown and "42s" in shown
    assert "Progressing · step 2/3" in shown and " 75% " in shown and " 25% v2" in shown
    assert "served v1 9000 · v2 3000" in shown
    for name, verdict in (("latency-p90", "Pass"), ("error-rate", "Inconclusive"), ("accuracy", "Fail")):
        row = next(line for line in shown.splitlines() if name in line and "│" in line)
        assert verdict in row, row
    accuracy = next(line for line in shown.splitlines() if "accuracy" in line and "Fail" in line)
    assert "█" * BAR in accuracy and "3600.00" in accuracy and "-8.0pp [-1.0, +2.0]" in accuracy
    assert "no harm detected: step 1 (25%)" in shown and "20s" in shown
    assert "holding: inconclusive: accuracy" in shown


def test_a_promoted_rollout_shows_the_last_step_not_one_past_it() -> None:
    shown = text(frame(stored("Succeeded", 3, 100), {}, SCENARIOS["good"], started=T0, now=T0 + 60))
    assert "Succeeded · step 3/3" in shown and "100% v2" in shown


def test_off_a_terminal_each_decision_is_printed_once() -> None:
    out = io.StringIO()
    view = LiveView(SCENARIOS["good"], Console(file=out, width=200, color_system=None))

    class World:
        started = T0

    with view:
        view(World(), stored())  # type: ignore[arg-type]
        view(World(), stored())  # type: ignore[arg-type]
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "Start" in lines[0] and "Advance" in lines[1] and "step 1: no harm detected" in lines[1]


@pytest.mark.parametrize(
    ("status", "reason", "message"),
    [("True", "Passed", "the canary's model 'fraud' is loaded and ready"), ("False", "Failed", "signature differs")],
)
def test_a_frame_shows_the_gate_once_it_ran(status: str, reason: str, message: str) -> None:
    rollout = stored("Initializing", 0, 0)
    rollout["status"]["conditions"] = [{"type": "GatePassed", "status": status, "reason": reason, "message": message}]
    shown = text(frame(rollout, {}, SCENARIOS["bad-signature"], started=T0, now=T0 + 5))
    assert f"gate {reason}: {message}" in shown


def test_without_a_gate_no_gate_line_is_shown() -> None:
    assert "gate " not in text(frame(stored(), {}, SCENARIOS["good"], started=T0, now=T0 + 5))
