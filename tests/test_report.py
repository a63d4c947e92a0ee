"""``canarist report``: the series drawn from a stored status, the page, and the command end to end.

The series functions are pure and tested with hand-made statuses in the exact format the controller
writes (camelCase, RFC 3339 times, logs oldest first), including statuses missing every optional
field. One status comes from real reconciles against the in-memory cluster, so the report is
checked against what the controller actually stores. The command runs as the real executable.
"""

from __future__ import annotations

import copy
import json
import math
import struct
import subprocess
import sys
from html import escape
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
import yaml
from click.testing import CliRunner

from controller.api.status import Phase, RolloutStatus
from controller.api.times import stored_time, timestamp
from controller.cli import cluster_commands
from controller.engine.reconcile import parse
from controller.engine.record import ANALYSES_LIMIT
from controller.report.drawing import draw_weights, estimate_limits
from controller.report.page import ReportError, build_report, read_object, rollout_object
from controller.report.series import (
    EstimatePath,
    Mark,
    WeightSeries,
    estimate_paths,
    estimate_scale,
    evidence_paths,
    latency_cdfs,
    metric_names,
    number,
    origin,
    output_shares,
    timed,
    weight_after,
    weight_series,
)
from tests.memory_cluster import MemoryCluster
from tests.test_reconcile import POLICY, Synthetic, drive

CANARIST = Path(sys.executable).parent / "canarist"
T0 = 1_795_000_020.0  # 2026-11-18T11:07:00Z
EDGES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
EVIL = "<script>alert('x')</script>"
PNG = b"\x89PNG\r\n\x1a\n"


def at(minutes: float) -> str:
    return timestamp(T0 + 60 * minutes)


def look(minute: int, step: int, weight: int, e_errors: float, *, estimate: float | None = 0.004) -> dict[str, Any]:
    """One entry of status.analyses: latency and error rate (regression evidence ``e_errors``)."""
    return {
        "at": at(minute),
        "step": step,
        "canaryWeight": weight,
        "metrics": [
            {"name": "latency-p99", "verdict": "Inconclusive", "sloBreached": False, "eValue": 0.8,
             "eValueNonInferiority": 1.5 * minute, "threshold": 30.0, "estimate": 0.02, "interval": None,
             "requests": {"stable": 6000 * minute, "canary": 300 * minute}},
            {"name": "error-rate", "verdict": "Fail" if e_errors >= 60 else "Inconclusive", "sloBreached": False,
             "eValue": e_errors, "eValueNonInferiority": 0.5, "threshold": 60.0, "estimate": estimate,
             "interval": [estimate - 0.01, estimate + 0.01] if estimate is not None else None,
             "requests": {"stable": 6000 * minute, "canary": 300 * minute}},
        ],
    }  # fmt: skip


def distribution(minute: int, step: int, action: str, slow: float) -> dict[str, Any]:
    stable = [0, 100, 900, 3000, 5000, 5900, 5990, 6000, 6000]
    canary = [0, round(50 * (1 - slow)), 400, 1200, 2000, 2600, 2900, 2990, 3000]
    return {"at": at(minute), "step": step, "action": action, "metric": "latency-p99", "edges": EDGES,
            "stable": stable, "canary": canary}  # fmt: skip


def transition(minute: float, frm: tuple[str, int], to: tuple[str, int], action: str, reason: str) -> dict[str, Any]:
    return {"at": at(minute), "fromPhase": frm[0], "fromStep": frm[1], "toPhase": to[0], "toStep": to[1],
            "action": action, "reason": reason}  # fmt: skip


def rolled_back() -> dict[str, Any]:
    """A hand-made ModelRollout as stored: started, advanced to 5 %, rolled back on its error rate."""
    history = [
        transition(0, ("Initializing", 0), ("Progressing", 0), "Start", "routes in place: analysing step 0"),
        transition(5, ("Progressing", 0), ("Progressing", 1), "Advance", "no harm detected: step 1 (5%)"),
        transition(9, ("Progressing", 1), ("RollingBack", 1), "Rollback", f"regression proven: error-rate {EVIL}"),
        transition(9.5, ("RollingBack", 1), ("Failed", 1), "Complete", "stable serves 100%: rolled back"),
    ]
    analyses = [look(m, 0 if m <= 5 else 1, 1 if m <= 5 else 5, 2.0**m) for m in range(1, 10)]
    latest = copy.deepcopy(analyses[-1]["metrics"])
    for m in latest:
        m["reason"] = f"canary worse {EVIL}" if m["name"] == "error-rate" else "p99 within margin"
    status = {
        "phase": "Failed",
        "currentStep": 1,
        "canaryWeight": 0,
        "message": f"stable serves 100%: rolled back {EVIL}",
        "stepStartedAt": at(9.5),
        "lastAnalysisAt": at(9),
        "metrics": latest,
        "history": history,
        "weights": [
            {"at": at(0), "canaryWeight": 1},
            {"at": at(5), "canaryWeight": 5},
            {"at": at(9), "canaryWeight": 0},
        ],
        "analyses": analyses,
        "distributions": [distribution(5, 1, "Advance", 0.0), distribution(9, 1, "Rollback", 0.5)],
    }
    return {**copy.deepcopy(POLICY), "status": status}


def real_rollout(canary_errors: float = 0.005, minutes: int = 40) -> dict[str, Any]:
    """The rollout after real reconciles against the in-memory cluster and synthetic traffic."""
    cluster = MemoryCluster()
    cluster.add(POLICY)
    drive(cluster, Synthetic(canary_errors=canary_errors), minutes=minutes)
    (obj,), _ = cluster.list_rollouts(None)
    return obj


def validated(obj: dict[str, Any]) -> Any:
    rollout, problem = parse(obj)
    assert rollout is not None, problem
    return rollout


def assert_png(path: Path) -> None:
    """A real, non-blank PNG: signature, IHDR size, and pixels that are not all the same."""
    data = path.read_bytes()
    assert data[:8] == PNG, path
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (height, width) and image.shape[2] in (3, 4)
    assert float(image[..., :3].var()) > 0, f"{path} is blank"


# --- small readers ----------------------------------------------------------------------------


def test_times_are_read_from_rfc3339_or_yaml_datetimes_and_anything_else_is_none() -> None:
    from datetime import UTC, datetime

    assert stored_time("2026-11-23T22:10:52Z") == datetime(2026, 11, 23, 22, 10, 52, tzinfo=UTC).timestamp()
    assert stored_time("2026-11-23T23:10:52+01:00") == stored_time("2026-11-23T22:10:52Z")
    assert stored_time(datetime(2026, 11, 23, 22, 10, 52)) == stored_time("2026-11-23T22:10:52Z")
    assert [stored_time(v) for v in (None, "", "yesterday", 17, [])] == [None] * 5


def test_numbers_are_finite_and_never_booleans_or_strings() -> None:
    assert [number(v) for v in (3, 2.5, True, "1", None, math.nan, math.inf)] == [
        3.0,
        2.5,
        None,
        None,
        None,
        None,
        None,
    ]


def test_log_entries_are_sorted_by_time_and_unreadable_ones_dropped() -> None:
    weights = [
        {"at": at(2), "canaryWeight": 2},
        "junk",
        {"at": "never", "canaryWeight": 9},
        {"at": at(1), "canaryWeight": 1},
    ]
    status = RolloutStatus.read({"weights": [*weights, {"canaryWeight": 0}]})
    assert [(t, e.canary_weight) for t, e in timed(status.weights)] == [(T0 + 60, 1), (T0 + 120, 2)]
    assert timed(RolloutStatus.read({"history": "not a list"}).history) == []
    assert timed(RolloutStatus.read({}).weights) == []


def test_time_zero_is_the_first_recorded_event() -> None:
    assert origin(RolloutStatus.read(rolled_back()["status"])) == T0
    assert origin(RolloutStatus.read({"stepStartedAt": at(3), "lastAnalysisAt": at(4)})) == T0 + 180
    assert origin(RolloutStatus.read({"phase": "Progressing"})) is None


# --- weights ----------------------------------------------------------------------------------


def test_weights_come_from_the_weights_log_with_each_decision_marked() -> None:
    obj = rolled_back()
    series = weight_series(RolloutStatus.read(obj["status"]), validated(obj), T0)
    assert series is not None and series.source == "weights"
    assert series.minutes == (0.0, 5.0, 9.0) and series.weights == (1.0, 5.0, 0.0)
    assert series.end == 9.5  # drawn up to the last recorded event
    assert [(m.minutes, m.action, m.weight) for m in series.marks] == [
        (0.0, "Start", 1.0),
        (5.0, "Advance", 5.0),
        (9.0, "Rollback", 0.0),
        (9.5, "Complete", 0.0),
    ]


def test_without_a_weights_log_the_weights_are_replayed_from_the_decisions() -> None:
    obj = rolled_back()
    del obj["status"]["weights"]
    series = weight_series(RolloutStatus.read(obj["status"]), validated(obj), T0)
    assert series is not None and series.source == "history"
    assert series.weights == (1.0, 5.0, 0.0, 0.0)
    assert [m.weight for m in series.marks] == [1.0, 5.0, 0.0, 0.0]


def test_without_a_valid_policy_only_phases_that_fix_the_weight_are_replayed() -> None:
    obj = rolled_back()
    del obj["status"]["weights"]
    series = weight_series(RolloutStatus.read(obj["status"]), None, T0)
    assert series is not None and series.weights == (0.0, 0.0)  # the rollback and its completion
    assert [m.weight for m in series.marks] == [None, None, 0.0, 0.0]


def test_no_weights_and_no_decisions_give_no_weight_series() -> None:
    assert weight_series(RolloutStatus.read({"phase": "Progressing", "canaryWeight": 5}), None, T0) is None


def test_the_weight_a_decision_puts_in_force() -> None:
    rollout = validated(copy.deepcopy(POLICY))
    assert weight_after(rollout, Phase.PROGRESSING, 2) == 25.0
    assert weight_after(rollout, Phase.INITIALIZING, 0) == 0.0  # a canary gets traffic from its Start on
    assert weight_after(rollout, Phase.FAILED, 3) == 0.0 and weight_after(None, Phase.ROLLING_BACK, 1) == 0.0
    assert weight_after(rollout, Phase.SUCCEEDED, 4) == 100.0 and weight_after(None, Phase.PROMOTING, 4) == 100.0
    assert weight_after(rollout, Phase.PROGRESSING, 99) == 100.0  # past the schedule: as the controller routes it
    assert weight_after(rollout, Phase.PROGRESSING, -1) is None
    assert weight_after(None, Phase.PROGRESSING, 1) is None  # no valid policy: no schedule to replay


def test_a_real_rollback_ends_at_zero_weight() -> None:
    obj = real_rollout(canary_errors=0.03, minutes=20)
    status = obj["status"]
    assert status["phase"] == "Failed"
    t0 = origin(RolloutStatus.read(status))
    assert t0 is not None
    series = weight_series(RolloutStatus.read(status), validated(obj), t0)
    assert series is not None and series.weights[0] == 1.0 and series.weights[-1] == 0.0
    assert "Rollback" in [m.action for m in series.marks]


# --- evidence and estimates -------------------------------------------------------------------


def test_evidence_paths_follow_every_look_against_the_real_threshold() -> None:
    obj = rolled_back()
    paths = evidence_paths(RolloutStatus.read(obj["status"]), validated(obj), T0)
    assert [p.metric for p in paths] == ["latency-p99", "error-rate"]
    errors = paths[1]
    assert errors.minutes == tuple(float(m) for m in range(1, 10))
    assert errors.regression == tuple(2.0**m for m in range(1, 10)) and errors.threshold == 60.0
    assert errors.noninferiority == (0.5,) * 9


def test_the_e_value_cap_is_no_threshold_and_missing_e_values_are_gaps() -> None:
    status = {
        "analyses": [
            {"at": at(1), "metrics": [{"name": "m", "eValue": 1.0, "threshold": 1e300}]},
            {"at": at(2), "metrics": [{"name": "m", "eValue": 0, "eValueNonInferiority": "high", "threshold": 40}]},
            {"at": at(3), "metrics": [{"name": "m", "eValue": 3.0, "threshold": 1e300}, {"verdict": "Pass"}]},
            {"at": at(4), "metrics": "garbage"},
        ]
    }
    (path,) = evidence_paths(RolloutStatus.read(status), None, T0)
    assert path.threshold == 40.0
    assert path.regression[0] == 1.0 and math.isnan(path.regression[1]) and path.regression[2] == 3.0
    assert all(math.isnan(v) for v in path.noninferiority)


def test_an_old_status_without_analyses_shows_its_latest_look() -> None:
    obj = rolled_back()
    status = {k: v for k, v in obj["status"].items() if k not in ("analyses", "weights", "distributions")}
    paths = evidence_paths(RolloutStatus.read(status), validated(obj), T0)
    assert [(p.metric, p.minutes) for p in paths] == [("latency-p99", (9.0,)), ("error-rate", (9.0,))]


def test_metrics_are_in_the_policy_order_then_extra_ones() -> None:
    obj = rolled_back()
    obj["status"]["analyses"][0]["metrics"].insert(0, {"name": "traffic-split", "eValue": 3.0, "threshold": 1000})
    assert metric_names(RolloutStatus.read(obj["status"]), validated(obj)) == [
        "latency-p99",
        "error-rate",
        "traffic-split",
    ]
    assert metric_names(RolloutStatus.read(obj["status"]), None) == ["traffic-split", "latency-p99", "error-rate"]


def metric(**fields: Any) -> Any:
    body = copy.deepcopy(POLICY)
    body["spec"]["analysis"]["metrics"] = [{"name": "m", **fields}]
    return validated(body).spec.analysis.metrics[0]


def test_estimates_are_shown_in_the_units_the_analysis_computes_them_in() -> None:
    latency = estimate_scale(metric(kind="IstioLatency", margin={"relative": "5%"}))
    assert (latency.factor, latency.unit, latency.margin, latency.points) == (100.0, "%", 5.0, True)
    errors = estimate_scale(metric(kind="IstioErrorRate", margin={"absolute": "0.25%"}))
    assert (errors.factor, errors.unit, errors.points) == (100.0, "pp", False)
    assert errors.margin == pytest.approx(0.25)
    accuracy = estimate_scale(
        metric(
            kind="CustomRatio",
            margin={"absolute": 0.01},
            ratio={"success": "c", "total": "t", "matchLabels": {"m": "x"}},
        )
    )
    assert accuracy.margin == pytest.approx(-1.0)  # higher is better: harm is below zero
    ratio = estimate_scale(metric(kind="TritonErrorRate", margin={"relative": "20%"}))
    assert (ratio.unit, ratio.margin, ratio.points) == ("%", 20.0, True)  # rate ratio - 1
    plug_in = estimate_scale(
        metric(
            kind="CustomRatio",
            margin={"relative": "2%"},
            ratio={"success": "c", "total": "t", "matchLabels": {"m": "x"}},
        )
    )
    assert plug_in.margin is None  # relative to the stable's rate: not known from the status
    gauge = estimate_scale(metric(kind="TritonLatency", margin={"absolute": "20ms"}))
    assert (gauge.factor, gauge.unit) == (1000.0, "ms") and gauge.margin == pytest.approx(20.0)
    unknown = estimate_scale(None)
    assert (unknown.factor, unknown.margin) == (1.0, None)


def test_estimate_paths_scale_values_and_intervals_and_skip_looks_without_one() -> None:
    obj = rolled_back()
    obj["status"]["analyses"][0] = look(1, 0, 1, 2.0, estimate=None)
    paths = {p.metric: p for p in estimate_paths(RolloutStatus.read(obj["status"]), validated(obj), T0)}
    errors, latency = paths["error-rate"], paths["latency-p99"]
    assert errors.minutes == tuple(float(m) for m in range(2, 10))
    assert errors.values == pytest.approx((0.4,) * 8) and errors.lows == pytest.approx((-0.6,) * 8)
    assert errors.highs == pytest.approx((1.4,) * 8) and errors.margin == pytest.approx(0.25)
    assert latency.points and latency.values == pytest.approx((2.0,) * 9) and all(math.isnan(v) for v in latency.lows)


def test_the_estimate_axis_keeps_values_margin_and_zero_but_cuts_a_huge_early_interval() -> None:
    item = EstimatePath("m", "pp", "pp", (1.0, 2.0), (0.3, 0.1), (-40.0, -0.2), (40.0, 0.4), 0.25, False)
    low, high = estimate_limits(item)
    assert low < -0.2 and high > 0.4 and low > -40 and high < 40
    narrow = EstimatePath("m", "pp", "pp", (1.0,), (1.0,), (0.9,), (1.1,), None, False)
    low, high = estimate_limits(narrow)
    assert low <= 0.0 and high >= 1.1


# --- latency distributions --------------------------------------------------------------------


def test_latency_distributions_become_cdfs_with_the_slo_and_quantile() -> None:
    obj = rolled_back()
    first, last = latency_cdfs(RolloutStatus.read(obj["status"]), validated(obj), T0)
    assert (first.minutes, first.step, first.action, last.action) == (5.0, 1, "Advance", "Rollback")
    assert first.edges_ms == pytest.approx([1000 * e for e in EDGES])
    assert first.stable == pytest.approx([0, 100 / 6000, 900 / 6000, 0.5, 5000 / 6000, 5900 / 6000, 5990 / 6000, 1.0])
    assert (first.n_stable, first.n_canary, first.slo_ms, first.quantile) == (6000, 3000, 250.0, 0.99)


def test_malformed_distributions_are_skipped_and_empty_versions_are_none() -> None:
    good = distribution(1, 0, "Advance", 0.0)
    status = {
        "distributions": [
            {**good, "stable": good["stable"][:-1]},  # one count short
            {**good, "edges": ["5ms", *EDGES[1:]]},
            {**good, "canary": "many"},
            {**good, "at": at(2), "canary": [0] * (len(EDGES) + 1)},
        ]
    }
    (cdf,) = latency_cdfs(RolloutStatus.read(status), None, T0)
    assert cdf.canary is None and cdf.stable is not None and cdf.minutes == 2.0
    assert cdf.slo_ms is None and cdf.quantile is None  # no valid policy: no lines drawn


def test_only_the_latest_six_decisions_are_drawn() -> None:
    status = {"distributions": [distribution(m, m, "Advance", 0.0) for m in range(10)]}
    assert [c.step for c in latency_cdfs(RolloutStatus.read(status), None, T0)] == [4, 5, 6, 7, 8, 9]


# --- a full log, an empty status ----------------------------------------------------------


def test_a_full_analyses_log_gives_a_path_through_every_look(tmp_path: Path) -> None:
    obj = rolled_back()
    obj["status"]["analyses"] = [look(m, 1, 5, 1.01**m) for m in range(1, ANALYSES_LIMIT + 1)]
    paths = evidence_paths(RolloutStatus.read(obj["status"]), validated(obj), T0)
    assert [len(p.minutes) for p in paths] == [ANALYSES_LIMIT] * 2
    assert list(paths[0].minutes) == sorted(paths[0].minutes) and paths[0].minutes[-1] == float(ANALYSES_LIMIT)
    assert [len(p.values) for p in estimate_paths(RolloutStatus.read(obj["status"]), validated(obj), T0)] == [
        ANALYSES_LIMIT
    ] * 2
    report = build_report(obj, tmp_path / "big")
    assert {p.name for p in report.images} == {"weights.png", "latency.png", "evidence.png", "estimates.png"}


def test_a_status_missing_every_optional_field_gives_a_page_of_notes(tmp_path: Path) -> None:
    obj = {**copy.deepcopy(POLICY), "status": {"phase": "Progressing"}}
    status = obj["status"]
    assert weight_series(RolloutStatus.read(status), None, 0.0) is None
    assert (
        evidence_paths(RolloutStatus.read(status), None, 0.0)
        == ()
        == estimate_paths(RolloutStatus.read(status), None, 0.0)
    )
    assert latency_cdfs(RolloutStatus.read(status), None, 0.0) == ()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "weights.png").write_bytes(PNG)  # an older report's
    report = build_report(obj, tmp_path / "r")
    assert report.images == () and len(report.notes) == 4 and report.files == (report.index,)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["index.html"]
    page = report.index.read_text()
    assert page.count("Not drawn:") == 4 and "No decision recorded" in page and "Progressing" in page


def test_the_spec_is_validated_as_the_controller_validates_it(tmp_path: Path) -> None:
    assert not any("does not validate" for n in build_report(rolled_back(), tmp_path / "good").notes)
    for path, value in ((("strategy", "interval"), "soon"), (("analysis", "alpha"), 7), (("service", "port"), 0)):
        bad = rolled_back()
        bad["spec"][path[0]][path[1]] = value
        rollout, problem = parse(bad)
        assert rollout is None and problem
        notes = build_report(bad, tmp_path / path[1]).notes
        assert any(f"the spec does not validate ({problem})" in n for n in notes), notes


# --- the page ---------------------------------------------------------------------------------


def test_the_report_of_real_reconciles_has_every_plot_and_every_decision(tmp_path: Path) -> None:
    obj = real_rollout()
    assert obj["status"]["phase"] == "Succeeded"
    report = build_report(obj, tmp_path / "r")
    assert report.notes == ()
    assert [p.name for p in report.images] == ["weights.png", "latency.png", "evidence.png", "estimates.png"]
    for image in report.images:
        assert_png(image)
    page = report.index.read_text()
    assert "ml-serving/fraud-detector" in page and "Succeeded" in page
    for row in obj["status"]["history"]:
        assert f"<td>{row['at']}</td>" in page and escape(row["reason"]) in page
    for image in report.images:
        assert f'src="{image.name}"' in page


def test_every_string_from_the_object_is_escaped_even_when_the_spec_is_invalid(tmp_path: Path) -> None:
    obj = rolled_back()
    obj["metadata"]["name"] = "<b>name</b>"  # not a valid policy any more: the page must still be safe
    obj["status"]["history"][1]["action"] = "Ad$vance"  # dollars are text in a plot, not mathtext
    obj["status"]["distributions"][0]["action"] = r"$\frac{$"  # bad mathtext
    report = build_report(obj, tmp_path / "r")
    assert any("does not validate" in n and "metadata.name" in n for n in report.notes)
    assert len(report.images) == 4  # without margins, SLO lines and replayed weights
    page = report.index.read_text()
    assert "<script>" not in page and "<b>name" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;name&lt;/b&gt;" in page


def test_the_same_series_draws_the_same_bytes(tmp_path: Path) -> None:
    series = WeightSeries((0.0, 5.0), (1.0, 5.0), 9.0, (Mark(5.0, "Advance", 5.0),), "weights")
    draw_weights(series, tmp_path / "a.png", "minutes", "t")
    draw_weights(series, tmp_path / "b.png", "minutes", "t")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert b"Software" not in (tmp_path / "a.png").read_bytes()


# --- the input ----------------------------------------------------------------------------------


def test_inputs_that_are_not_a_reported_rollout_are_refused_in_one_line() -> None:
    obj = rolled_back()
    assert rollout_object({"kind": "List", "items": [obj]})["status"] == obj["status"]
    for doc, fragment in (
        ({"kind": "List", "items": [obj, obj]}, "List of 2"),
        ([obj], "not a ModelRollout"),
        ({**obj, "kind": "Service"}, "but a Service"),
        ({**obj, "status": {}}, "no status yet"),
        ({k: v for k, v in obj.items() if k != "status"}, "no status yet"),
    ):
        with pytest.raises(ReportError, match=fragment):
            rollout_object(doc, "x.yaml")


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(obj: Any, **options: Any) -> str:
    """YAML as ``kubectl get -o yaml`` writes it: shared values written out, never as aliases."""
    text: str = yaml.dump(obj, Dumper=_NoAliases, **options)
    return text


def test_yaml_with_unquoted_times_is_read(tmp_path: Path) -> None:
    path = tmp_path / "rollout.yaml"
    text = dump_yaml(rolled_back(), sort_keys=False)
    path.write_text(text.replace("'2026-", "2026-").replace("Z'", "Z"))  # YAML timestamps, kept as text
    obj = read_object(path)
    assert obj["status"]["history"][0]["at"] == rolled_back()["status"]["history"][0]["at"]
    assert origin(RolloutStatus.read(obj["status"])) == T0


def _alias_bomb(levels: int = 9) -> str:
    """The 429-byte file that expanded to 17 MB of HTML: nine levels of nine aliases each."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijklmnopqrstuvwxyz"
    for i in range(1, levels + 1):
        lines.append(f"{names[i]}: &{names[i]} [{', '.join([f'*{names[i - 1]}'] * 9)}]")
    return "\n".join(lines) + "\n"


def _rollout_with(status_extra: str) -> str:
    """A reportable rollout as YAML, with ``status_extra`` (YAML at status level) appended."""
    text = dump_yaml(rolled_back(), sort_keys=False)
    return text + "".join(f"  {line}\n" for line in status_extra.splitlines()) if status_extra else text


HOSTILE_INPUTS = [
    ("alias-bomb", _alias_bomb, "aliases are not allowed"),
    ("alias-bomb-in-a-rollout", lambda: _rollout_with(_alias_bomb()), "aliases are not allowed"),
    ("one-alias", lambda: _rollout_with("x: &x [1]\ny: *x"), "aliases are not allowed"),
    ("too-large-yaml", lambda: _rollout_with("# " + "x" * (5 * 1024 * 1024)), "larger than 4096 KiB"),
    ("deep-json", lambda: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("deep-yaml", lambda: "a: " + "[" * 100_000 + "]" * 100_000, "nested"),
    ("two-documents", lambda: _rollout_with("") + "---\n" + _rollout_with(""), "2 YAML documents"),
    ("python-tag", lambda: "!!python/object:os.system {}", "unsupported YAML tag"),
]


@pytest.mark.parametrize(
    ("make", "fragment"), [(m, f) for _, m, f in HOSTILE_INPUTS], ids=[i for i, _, _ in HOSTILE_INPUTS]
)
def test_hostile_yaml_is_refused_in_one_line_before_anything_expands(make: Any, fragment: str, tmp_path: Path) -> None:
    source = tmp_path / "rollout.yaml"
    source.write_text(make(), encoding="utf-8")
    with pytest.raises(ReportError, match=fragment) as info:
        read_object(source)
    assert len(str(info.value).splitlines()) == 1 and str(info.value).isprintable()
    result = CliRunner().invoke(cluster_commands.report, [str(source), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert len(result.output.strip().splitlines()) == 1 and fragment in result.output
    assert not (tmp_path / "out").exists()


def test_names_in_refusals_are_printable(tmp_path: Path) -> None:
    source = tmp_path / "rollout\x1b[31m.yaml"
    source.write_text(dump_yaml({**rolled_back(), "kind": "\x1b]0;owned\x07Service"}))
    with pytest.raises(ReportError) as info:
        read_object(source)
    assert str(info.value).isprintable() and "\\x1b" in str(info.value)


# --- the executable -----------------------------------------------------------------------------


def run_canarist(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CANARIST), *args], capture_output=True, text=True, timeout=60, check=False)


def test_report_from_a_file_through_the_executable(tmp_path: Path) -> None:
    source = tmp_path / "rollout.json"
    source.write_text(json.dumps(rolled_back()))
    out = tmp_path / "report"
    proc = run_canarist("report", str(source), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip() == str(out / "index.html")
    page = (out / "index.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("<tr><td>2026-") == 4  # the four decisions
    assert "regression proven: error-rate &lt;script&gt;" in page and ">Rollback<" in page
    assert f"<td>{at(9.5)}</td>" in page and "RollingBack / step 1" in page
    for name in ("weights.png", "latency.png", "evidence.png", "estimates.png"):
        assert_png(out / name)
        assert f'src="{name}"' in page


def test_a_bad_input_through_the_executable_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    proc = run_canarist("report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"canarist: error: {tmp_path / 'missing.json'}: no such file"]


def test_every_bad_input_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    source = tmp_path / "rollout.yaml"
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {}, "status": {"a": 1}}
    no_status = {k: v for k, v in rolled_back().items() if k != "status"}
    cases = [
        (service, "out", "not a ModelRollout but a Service"),
        (no_status, "out", "no status yet"),
        ("{not: [yaml", "out", "neither JSON nor YAML"),
        (rolled_back(), "rollout.yaml/report", "cannot create the report directory"),
    ]
    for doc, out, fragment in cases:
        source.write_text(doc if isinstance(doc, str) else dump_yaml(doc))
        result = CliRunner().invoke(cluster_commands.report, [str(source), "--out", str(tmp_path / out)])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], result.output
    result = CliRunner().invoke(cluster_commands.report, [str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and f"{tmp_path}: not a file" in result.output
    result = CliRunner().invoke(cluster_commands.report, [str(source), "--out", str(source)])
    assert result.exit_code == 2 and "is a file" in result.output  # click's usage error: one line via main()


def test_the_latency_plot_shows_the_range_with_data_and_the_slo() -> None:
    from controller.report.drawing import latency_range
    from controller.report.series import Cdf

    edges = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000)
    shares = (0, 0, 0, 0.02, 0.6, 0.95, 0.999, 1, 1, 1, 1, 1, 1, 1, 1, 1)
    no_slo = Cdf("latency", 1.0, 1, "Advance", edges, shares, shares, 100, 100, None, 0.9)
    assert latency_range(no_slo) == (2.5, 1000)  # from below 10 ms to past 250 ms, where every request is in
    far_slo = Cdf("latency", 1.0, 1, "Advance", edges, shares, None, 100, 0, 2500.0, 0.9)
    assert latency_range(far_slo) == (2.5, 5000)


# --- prediction distributions -----------------------------------------------------------------


def with_outputs(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` whose policy also compares the versions' outputs, with their counts at two decisions."""
    obj = copy.deepcopy(obj)
    obj["spec"]["analysis"]["metrics"].append(
        {
            "name": "predictions",
            "kind": "PredictionDistribution",
            "outputs": {"histogram": "fraud_score", "matchLabels": {"model": "fraud"}, "positiveAbove": 0.5},
            "margin": {"absolute": "10%"},
        }
    )
    buckets = ["<= 0.25", "(0.25, 0.5]", "(0.5, 0.75]", f"(0.75, inf] {EVIL}"]
    obj["status"]["distributions"] += [
        {"at": at(5), "step": 1, "action": "Advance", "metric": "predictions", "buckets": buckets,
         "stable": [700, 200, 60, 40], "canary": [30, 15, 3, 2]},
        {"at": at(9), "step": 1, "action": "Rollback", "metric": "predictions", "buckets": buckets,
         "stable": [1400, 400, 120, 80], "canary": [90, 120, 60, 30]},
    ]  # fmt: skip
    return obj


def test_the_report_draws_both_versions_output_distributions_at_each_decision(tmp_path: Path) -> None:
    obj = with_outputs(rolled_back())
    validated(obj)
    shares = output_shares(RolloutStatus.read(obj["status"]), stored_time(at(0)) or 0.0)
    assert [(s.action, s.n_stable, s.n_canary) for s in shares] == [("Advance", 1000, 50), ("Rollback", 2000, 300)]
    assert shares[1].canary == pytest.approx((0.3, 0.4, 0.2, 0.1))
    report = build_report(obj, tmp_path / "r")
    assert [p.name for p in report.images] == [
        "weights.png",
        "latency.png",
        "outputs.png",
        "evidence.png",
        "estimates.png",
    ]
    assert_png(tmp_path / "r" / "outputs.png")
    page = report.index.read_text()
    assert "Output distributions" in page and EVIL not in page


def test_a_policy_without_a_prediction_distribution_draws_none_and_says_nothing_of_it(tmp_path: Path) -> None:
    report = build_report(rolled_back(), tmp_path / "r")
    assert "outputs.png" not in {p.name for p in report.images}
    assert not any("outputs.png" in n for n in report.notes)
