"""``python -m bench.scale`` in short: one look a pass for every rollout, and what it fetches does not grow with age."""

from __future__ import annotations

import json
from pathlib import Path

from bench import scale


def test_a_pass_is_one_look_and_fetches_the_new_windows_only() -> None:
    kept = scale.run_size(12, 5, cache=True)
    again = scale.run_size(12, 5, cache=False)
    looking = [p for p in kept["passes"] if p["reconciles"] and p["minute"] > 0]
    assert looking and all(p["looks"] == 1 and p["reconciles"] == 12 for p in looking)
    assert len({p["prometheus_requests"] for p in looking}) == 1  # one query per family, whatever the age
    fetched = [p["prometheus_samples"] for p in kept["passes"][2:]]
    assert len(set(fetched)) == 1, fetched  # flat: the newest windows only
    grown = [p["prometheus_samples"] for p in again["passes"][1:]]
    assert grown == sorted(grown) and grown[-1] > grown[0]  # every window since the start, every time
    summary = scale.summary(kept)
    assert summary["every_pass_within_a_minute"]
    assert summary["late_minutes"] == [0, 4] and summary["late_max_pass_seconds"] >= summary["late_pass_seconds"] > 0


def test_an_aged_run_begins_late_in_the_analyses_and_fetches_the_new_window_only() -> None:
    young = scale.run_size(4, 4, cache=True)
    aged = scale.run_size(4, 3, cache=True, age=9)
    assert [p["minute"] for p in aged["passes"]] == [9, 10, 11] and aged["aging_seconds"] > 0
    assert all(p["looks"] == 1 and p["reconciles"] == 4 for p in aged["passes"])
    # the restart's first look read the past: from then on, what a young analysis fetches
    assert {p["prometheus_samples"] for p in aged["passes"]} == {young["passes"][-1]["prometheus_samples"]}
    assert scale.summary(aged)["age_minutes"] == 9


def test_the_history_holds_what_the_policies_read(tmp_path: Path) -> None:
    path = tmp_path / "h.om"
    samples = scale.history(3, 4, path)
    text = path.read_text()
    assert text.endswith("# EOF\n") and samples == 3 * 2 * 15 * (4 * 60 // scale.SCRAPE + 1)
    assert 'destination_service_namespace="s2"' in text and 'correct_total{namespace="s0"' in text
    assert json.dumps(scale.policy(1))  # a plain document
