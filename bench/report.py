"""Write the benchmark's results: ``stats.json``, ``stats.md`` (the table) and ``stats.png`` (detection curves)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    ("engine", "engine"),
    ("scenario", "scenario"),
    ("runs", "runs"),
    ("rollback_rate", "rollback"),
    ("rollback_rate_ci95", "rollback CI95"),
    ("promote_rate", "promote"),
    ("median_canary_requests_to_rollback", "median canary req. to rollback"),
    ("p90_canary_requests_to_rollback", "p90 canary req. to rollback"),
    ("median_harm_requests", "median harm req."),
    ("mean_harm_requests", "mean harm req."),
    ("median_minutes_to_decision", "median min. to decision"),
    ("ratio_to_oracle", "x oracle"),
    ("ratio_to_margin_oracle", "x margin oracle"),
)


_STYLES = {"oracle-sprt": "--", "oracle-sprt-margin": ":"}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 1 else f"{value:g}"
    return str(value)


def markdown_table(records: Sequence[Mapping[str, Any]]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = ["| " + " | ".join(_cell(r[key]) for key, _ in COLUMNS) + " |" for r in records]
    return "\n".join([head, rule, *rows])


def _oracle_beta(policy: Mapping[str, Any]) -> str:
    beta = policy.get("engine_parameters", {}).get("oracle-sprt", {}).get("beta")
    return "?" if beta is None else f"{beta:g}"


def markdown(document: Mapping[str, Any]) -> str:
    policy = document["policy"]
    sim = document["simulator"]
    lines = [
        "# canarist benchmark",
        "",
        f"Policy (every engine): margins {policy['latency_margin_rel']:.0%} relative on latency, "
        f"+{policy['error_margin_abs'] * 100:g} points on error rate, -{policy['accuracy_margin_abs'] * 100:g} "
        f"point(s) on accuracy; SLO p99 <= {policy['slo_p99_ms']:g} ms, error rate <= "
        f"{policy['slo_error_rate']:.0%}; alpha {policy['alpha']:g} per rollout; progress deadline "
        f"{policy['deadline_s'] / 3600:g} h; {policy['step_intervals']} interval(s) per step for the "
        "schedule-driven baselines.",
        "",
        f"Simulator: {sim['rps']:g} req/s (+-{sim['diurnal_amplitude']:.0%} diurnal), steps "
        f"{sim['steps']} %, {sim['interval_s']:g} s intervals, {sim['scrape_s']:g} s scrapes (p miss "
        f"{sim['p_missed_scrape']:g}, p reset {sim['p_reset']:g} per interval and version); seed {sim['seed']}; "
        f"runs {sim['runs']}.",
        "",
        "Harm: requests the bad canary served within the progress deadline's horizon (2 h from the start) in "
        "regression scenarios: those before a rollback, or, after a promotion, every request from then on. "
        "`x oracle`: median canary requests to rollback over oracle-sprt's (H0: canary = stable); "
        "`x margin oracle`: over oracle-sprt-margin's, the same SPRT with H0 at the policy's margin boundary, "
        "the limit for an engine that may only roll back a canary proven worse than the margin. Both oracles "
        f"use beta = {_oracle_beta(policy)}: the power asked of canarist.",
        "",
        markdown_table(document["results"]),
        "",
    ]
    matched = document.get("matched", {})
    if matched:
        lines += [
            "## canarist at the baselines' false-rollback rates",
            "",
            "`canarist@X`: canarist asked X's question (is the canary worse than stable at all? margins 0) with "
            "alpha = X's A/A rollback rate measured above: "
            + "; ".join(f"{name}: alpha {alpha:g}" for name, alpha in matched.items())
            + ". Same traffic, same SLOs.",
            "",
        ]
    return "\n".join(lines)


def plot(
    curves: Mapping[tuple[str, str], tuple[list[int], int]],
    engines: Sequence[str],
    scenarios: Sequence[str],
    path: Path,
) -> bool:
    """Detection curves: fraction of runs rolled back vs canary requests served, one panel per regression."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print("matplotlib is not installed: stats.png not written", file=sys.stderr)
        return False
    panels = [s for s in scenarios if s != "aa"]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, scenario in zip(axes[0], panels, strict=True):
        for engine in engines:
            if (engine, scenario) not in curves:
                continue
            rolled, runs = curves[(engine, scenario)]
            xs = [1, *rolled] if rolled else [1]
            ys = [0.0, *[(i + 1) / runs for i in range(len(rolled))]]
            label = engine
            if (engine, "aa") in curves:  # a detection curve means little without its false-rollback rate
                aa_rolled, aa_runs = curves[(engine, "aa")]
                label = f"{engine} (A/A {len(aa_rolled) / aa_runs:.2f})"
            ax.step(xs, ys, where="post", label=label, linestyle=_STYLES.get(engine, "-"))
        ax.set_xscale("log")
        ax.set_title(scenario, fontsize=10)
        ax.set_xlabel("canary requests served")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("fraction of runs rolled back")
    axes[0][0].legend(fontsize=7, loc="upper left", title="engine (A/A rollback rate)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(
    out: Path,
    document: Mapping[str, Any],
    curves: Mapping[tuple[str, str], tuple[list[int], int]],
    engines: Sequence[str],
    scenarios: Sequence[str],
) -> list[Path]:
    """Write the three result files into ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "stats.json", out / "stats.md"]
    written[0].write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    written[1].write_text(markdown(document))
    if plot(curves, engines, scenarios, out / "stats.png"):
        written.append(out / "stats.png")
    return written
