"""The plots of ``canarist report`` drawn: one PNG each, from the series of :mod:`controller.report.series`.

The ``draw_*`` functions lay plot-ready values out, knowing nothing of the status format. Figures
are :class:`matplotlib.figure.Figure` objects (no pyplot: no global registry of open figures to
leak, nothing to close) rendered by Agg, and saved without the Software metadata so that the same
input gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before anything could pull in pyplot: never a display

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from controller.report.series import Cdf, EstimatePath, EvidencePath, Mark, OutputShares, WeightSeries

DPI = 100
SHARE_TICKS = (0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
ACTION_COLOURS = {
    "Start": "tab:blue",
    "Advance": "tab:blue",
    "Promote": "tab:green",
    "Complete": "tab:green",
    "Rollback": "tab:red",
    "Pause": "tab:orange",
    "Hold": "tab:gray",
    "Resume": "tab:purple",
    "Retry": "tab:purple",
    "Restart": "tab:purple",
}


def draw_weights(series: WeightSeries, path: Path, time_label: str, title: str) -> None:
    figure = Figure(figsize=(9, 4), layout="constrained")
    ax = figure.add_subplot()
    xs, ys = [*series.minutes, max(series.end, series.minutes[-1])], [*series.weights, series.weights[-1]]
    ax.step(xs, ys, where="post", color="tab:blue", linewidth=2, label="canary weight")
    for mark in series.marks:
        colour = ACTION_COLOURS.get(mark.action, "black")
        ax.axvline(mark.minutes, color=colour, alpha=0.25, linewidth=1)
        if mark.weight is not None:
            ax.plot([mark.minutes], [mark.weight], marker="o", color=colour)
            ax.annotate(
                mark.action, (mark.minutes, mark.weight), textcoords="offset points", xytext=(3, 6), fontsize=8,
                rotation=30, color=colour, parse_math=False,
            )  # fmt: skip
    ax.set_ylim(-5, 110)
    ax.set_xlabel(time_label)
    ax.set_ylabel("canary weight (%)")
    source = "" if series.source == "weights" else " (replayed from the decision log)"
    ax.set_title(f"{title}: canary weight over time{source}", parse_math=False)
    ax.grid(alpha=0.3)
    _save(figure, path)


def latency_range(cdf: Cdf) -> tuple[float, float]:
    """The x range worth showing: from the edge below the first request to the edge past the last (and the SLO)."""
    edges = cdf.edges_ms
    lo, hi = len(edges) - 1, 0
    for shares in (cdf.stable, cdf.canary):
        if shares is None:
            continue
        lo = min(lo, next((i for i, v in enumerate(shares) if v > 0), len(edges) - 1))
        hi = max(hi, next((i for i, v in enumerate(shares) if v >= 1.0), len(edges) - 1))
    low = edges[max(lo - 1, 0)] / 2
    high = edges[min(hi + 1, len(edges) - 1)] * 2
    if cdf.slo_ms is not None:
        low, high = min(low, cdf.slo_ms / 2), max(high, cdf.slo_ms * 2)
    return low, high


def draw_latency(cdfs: Sequence[Cdf], path: Path, title: str) -> None:
    figure, axes = _panels(len(cdfs), width=4.6, height=3.4)
    for ax, cdf in zip(axes, cdfs, strict=False):
        for name, shares, n, colour in (
            ("stable", cdf.stable, cdf.n_stable, "tab:blue"),
            ("canary", cdf.canary, cdf.n_canary, "tab:orange"),
        ):
            if shares is not None:  # drawn a little past the last finite edge: its level holds up to +Inf
                xs, ys = [*cdf.edges_ms, 2 * cdf.edges_ms[-1]], [*shares, shares[-1]]
                ax.step(xs, ys, where="post", color=colour, label=f"{name} (n={n:,})")
        if cdf.slo_ms is not None:
            ax.axvline(cdf.slo_ms, color="tab:red", linestyle="--", label=f"SLO {cdf.slo_ms:g} ms")
        if cdf.quantile is not None:
            ax.axhline(cdf.quantile, color="gray", linestyle=":", label=f"p{cdf.quantile * 100:g}")
        ax.set_xscale("log")
        ax.set_xlim(*latency_range(cdf))
        ax.set_yscale("logit", nonpositive="clip")  # spreads the tail out: 0.9, 0.99, 0.999
        ax.set_ylim(SHARE_TICKS[0], SHARE_TICKS[-1])
        ax.set_yticks(SHARE_TICKS, [f"{t * 100:g}%" for t in SHARE_TICKS])
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("requests at or below (logit scale)")
        step = "" if cdf.step is None else f", step {cdf.step}"
        when = f"{cdf.minutes:.1f}" if cdf.minutes < 10 else f"{cdf.minutes:.0f}"
        ax.set_title(f"{cdf.metric}: {cdf.action} at {when} min{step}", fontsize=10, parse_math=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    figure.suptitle(
        f"{title}: latency distributions at each decision (cumulative since the analysis began)", parse_math=False
    )
    _save(figure, path)


def draw_outputs(items: Sequence[OutputShares], path: Path, title: str) -> None:
    """Each decision's output distributions: the share of each version's outputs in each bucket, side by side."""
    figure, axes = _panels(len(items), width=5.0, height=3.4)
    for ax, item in zip(axes, items, strict=False):
        x = list(range(len(item.buckets)))
        for offset, (name, shares, n, colour) in zip(
            (-0.2, 0.2),
            (("stable", item.stable, item.n_stable, "tab:blue"), ("canary", item.canary, item.n_canary, "tab:orange")),
            strict=True,
        ):
            if shares is not None:
                ax.bar([i + offset for i in x], shares, width=0.4, color=colour, label=f"{name} (n={n:,})")
        ax.set_xticks(x, list(item.buckets), rotation=45, ha="right", fontsize=6)
        ax.set_ylabel("share of outputs")
        step = "" if item.step is None else f", step {item.step}"
        when = f"{item.minutes:.1f}" if item.minutes < 10 else f"{item.minutes:.0f}"
        ax.set_title(f"{item.metric}: {item.action} at {when} min{step}", fontsize=10, parse_math=False)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="best")
    figure.suptitle(
        f"{title}: what each version predicted, at each decision (since the analysis began)", parse_math=False
    )
    _save(figure, path)


def draw_evidence(
    paths: Sequence[EvidencePath], marks: Sequence[Mark], path: Path, time_label: str, title: str
) -> None:
    figure, axes = _panels(len(paths), width=5.0, height=3.4, columns=2)
    for ax, item in zip(axes, paths, strict=False):
        _decisions(ax, marks)
        ax.plot(item.minutes, item.regression, marker=".", color="tab:red", label="regression (eValue)")
        ax.plot(item.minutes, item.noninferiority, marker=".", color="tab:green", label="non-inferiority")
        if item.threshold is not None:
            ax.axhline(item.threshold, color="black", linestyle="--", label=f"threshold {item.threshold:.3g}")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel(time_label)
        ax.set_ylabel("e-value (log scale)")
        ax.set_title(item.metric, fontsize=10, parse_math=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    figure.suptitle(f"{title}: evidence at each look (a path reaching the threshold decides)", parse_math=False)
    _save(figure, path)


def draw_estimates(
    paths: Sequence[EstimatePath], marks: Sequence[Mark], path: Path, time_label: str, title: str
) -> None:
    figure, axes = _panels(len(paths), width=5.0, height=3.4, columns=2)
    for ax, item in zip(axes, paths, strict=False):
        _decisions(ax, marks)
        ax.axhline(0.0, color="gray", linewidth=0.8)
        if item.points:
            ax.plot(item.minutes, item.values, "o", color="tab:purple", markersize=4, label="canary vs stable")
        else:
            ax.plot(item.minutes, item.values, marker=".", color="tab:purple", label="canary - stable")
            if any(math.isfinite(v) for v in item.lows):
                ax.fill_between(item.minutes, item.lows, item.highs, color="tab:purple", alpha=0.2, label="interval")
        if item.margin is not None:
            ax.axhline(item.margin, color="tab:red", linestyle="--", label=f"margin {item.margin:+.3g} {item.unit}")
        ax.set_ylim(*estimate_limits(item))
        ax.set_xlabel(time_label)
        ax.set_ylabel(item.label)
        ax.set_title(item.metric, fontsize=10, parse_math=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    figure.suptitle(f"{title}: estimated effect of the canary at each look", parse_math=False)
    _save(figure, path)


def estimate_limits(item: EstimatePath) -> tuple[float, float]:
    """A y range around the estimates, the margin and zero: an early, very wide interval is cut off."""
    core = [v for v in (*item.values, 0.0, item.margin) if v is not None and math.isfinite(v)]
    low, high = min(core), max(core)
    pad = max(high - low, abs(high), abs(low), 1e-9)
    bands = [v for v in (*item.lows, *item.highs) if math.isfinite(v)]
    low, high = max(min([low, *bands]), low - pad), min(max([high, *bands]), high + pad)
    return low - 0.05 * (high - low), high + 0.05 * (high - low)


def _panels(count: int, *, width: float, height: float, columns: int = 3) -> tuple[Figure, list[Any]]:
    cols = max(1, min(columns, count))
    rows = math.ceil(count / cols)
    figure = Figure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    grid = figure.subplots(rows, cols, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[count:]:
        ax.set_visible(False)
    return figure, axes[:count]


def _decisions(ax: Any, marks: Sequence[Mark]) -> None:
    for mark in marks:
        ax.axvline(mark.minutes, color=ACTION_COLOURS.get(mark.action, "black"), alpha=0.2, linewidth=1)


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
