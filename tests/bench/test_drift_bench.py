"""``python -m bench.drift`` in short, seeded: the outputs warn before the labels, and not falsely."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench import drift


def by(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["scenario"], r["metric"]): r for r in records}


def test_a_shifted_canary_is_caught_by_its_outputs_before_its_labels_and_an_equal_one_is_not() -> None:
    got = by(drift.run({"aa": 60, "shifted": 30, "subtle": 1}, seed=5))
    assert got[("aa", "predictions")]["harm_proven_rate"] <= 0.05
    assert got[("aa", "accuracy")]["harm_proven_rate"] <= 0.05
    assert got[("shifted", "predictions")]["harm_proven_rate"] >= 0.95
    assert got[("shifted", "predictions")]["median_minutes"] < got[("shifted", "accuracy")]["median_minutes"]
    assert got[("shifted", "predictions-first")]["share"] >= 0.9


def test_the_canarys_outputs_are_moved_by_exactly_the_scenarios_distance() -> None:
    for scenario in drift.SCENARIOS:
        shares = drift.canary_scores(scenario.moved)
        assert np.isclose(shares.sum(), 1.0) and shares.min() >= 0
        assert np.isclose(0.5 * np.abs(shares - drift.STABLE).sum(), scenario.moved)


def test_the_command_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "drift.json"
    assert drift.main(["--aa-runs", "2", "--runs", "2", "--seed", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["runs"] == {"aa": 2, "shifted": 2, "subtle": 2}
    assert {(r["scenario"], r["metric"]) for r in result["results"]} >= {
        (s.name, m) for s in drift.SCENARIOS for m in ("predictions", "accuracy")
    }
