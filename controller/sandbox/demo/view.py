"""The demo's live view (rich): step, weights, requests per version, each metric's evidence, decisions.

On a terminal it redraws in place; otherwise (CI, a pipe) it prints one line per decision, so a log
reads like the story it is. The drawing reads only the rollout's status and haproxy's counters:
what ``canarist status`` and a dashboard would see.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from controller.api.status import MetricStatus, RolloutStatus, StoredTransition
from controller.sandbox.demo.run import World
from controller.sandbox.demo.scenarios import CANARY, STABLE, Scenario

BAR = 12


def evidence_bar(e_value: float | None, threshold: float | None) -> Text:
    """How far an e-value has come toward its threshold, on the log scale the decision uses."""
    if not e_value or not threshold or threshold <= 1:
        return Text("·" * BAR, style="dim")
    progress = min(max(math.log(max(e_value, 1e-300)) / math.log(threshold), 0.0), 1.0)
    filled = round(progress * BAR)
    return Text("█" * filled + "·" * (BAR - filled), style="bold" if progress >= 1 else "")


def _number(value: float | None, *, percent: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if percent:
        return f"{value:+.2%}"
    return f"{value:.1e}" if value >= 1e4 or 0 < value < 1e-2 else f"{value:.2f}"


def _points(value: float | None) -> str:
    return f"{value * 100:+.1f}" if value is not None and math.isfinite(value) else "-"


def metrics_table(metrics: Sequence[MetricStatus]) -> Table:
    table = Table(expand=True, show_edge=False, pad_edge=False, box=box.SIMPLE_HEAD)
    table.add_column("metric", no_wrap=True, min_width=11)
    table.add_column("verdict", no_wrap=True, min_width=12)
    table.add_column("evidence of harm", no_wrap=True, min_width=BAR + 8)
    table.add_column("of no harm", no_wrap=True, min_width=BAR + 8)
    table.add_column("canary - stable", no_wrap=True, min_width=19)
    style = {"Pass": "green", "Fail": "red", "Inconclusive": "yellow", "NoData": "dim"}
    for m in metrics:
        interval = m.interval
        if interval is not None and None not in interval:  # a rate, in points
            estimate = f"{_points(m.estimate)}pp [{_points(interval[0])}, {_points(interval[1])}]"
        else:  # a latency quantile's relative change
            estimate = _number(m.estimate, percent=True)
        verdict = m.verdict.value if m.verdict is not None else "?"
        table.add_row(
            m.name if m.name is not None else "?",
            Text(verdict, style=style.get(verdict, "")),
            Text.assemble(evidence_bar(m.e_value, m.threshold), f" {_number(m.e_value)}"),
            Text.assemble(
                evidence_bar(m.e_value_non_inferiority, m.threshold),
                f" {_number(m.e_value_non_inferiority)}",
            ),
            estimate,
        )
    return table


def decisions_table(history: Sequence[StoredTransition], started: float, limit: int = 6) -> Table:
    table = Table(expand=True, show_edge=False, pad_edge=False, show_header=False, box=None)
    table.add_column("t", no_wrap=True, width=6)
    table.add_column("action", no_wrap=True, width=9)
    table.add_column("reason", overflow="fold", ratio=1)
    for t in list(history)[-limit:]:
        at = _since(t, started)
        table.add_row(f"{max(at, 0.0):5.0f}s", t.action.value, t.reason)
    return table


def _since(transition: StoredTransition, started: float) -> float:
    """Seconds from the demo's start to a decision (0 when its time is unreadable)."""
    return (transition.at if transition.at is not None else started) - started


def frame(
    rollout: Mapping[str, Any], served: Mapping[str, int], scenario: Scenario, *, started: float, now: float
) -> RenderableType:
    """One picture of the rollout as it stands: its stored object, and what haproxy served."""
    status = RolloutStatus.read(rollout.get("status"))
    weight = status.canary_weight or 0
    steps = (rollout.get("spec") or {}).get("strategy", {}).get("steps", [])
    head = Table.grid(expand=True)
    head.add_column()
    head.add_column(justify="right")
    head.add_row(
        Text.assemble(("canarist demo ", "bold"), f"· scenario {scenario.name}: {scenario.summary}"),
        f"{now - started:5.0f}s",
    )
    split = round(weight / 100 * 30)
    phase = status.phase.value if status.phase is not None else "Initializing"
    head.add_row(
        Text.assemble(
            f"{phase} · step {min((status.current_step or 0) + 1, len(steps))}/{len(steps)} ",
            (f"{STABLE} {100 - weight:3d}% ", "cyan"),
            ("▇" * (30 - split), "cyan"),
            ("▇" * split, "magenta"),
            (f" {weight:3d}% {CANARY}", "magenta"),
        ),
        f"served {STABLE} {served.get(STABLE, 0)} · {CANARY} {served.get(CANARY, 0)}",
    )
    message = Text(status.message or "", style="italic")
    gate = next((c for c in status.conditions if c.type == "GatePassed"), None)
    shown: list[RenderableType] = [head, message]
    if gate is not None:
        style = {"True": "green", "False": "red" if gate.reason == "Failed" else "yellow"}.get(gate.status or "", "")
        shown.append(Text.assemble(("gate ", "bold"), (f"{gate.reason}: ", style), gate.message or ""))
    body = Group(
        *shown,
        Panel(metrics_table(status.metrics), title="evidence (bars: log e-value / log threshold)"),
        Panel(decisions_table(status.history, started), title="decisions"),
    )
    return body


class LiveView:
    """Redraws :func:`frame` in place on a terminal; prints each new decision as a line elsewhere."""

    def __init__(self, scenario: Scenario, console: Console | None = None) -> None:
        self.scenario = scenario
        self.console = console or Console()
        self.live: Live | None = None
        self.printed = 0

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def __call__(self, world: World, rollout: Mapping[str, Any]) -> None:
        if self.live is not None:
            picture = frame(rollout, world.haproxy.served(), self.scenario, started=world.started, now=time.time())
            self.live.update(picture)
            return
        history = RolloutStatus.read(rollout.get("status")).history
        for t in history[self.printed :]:
            at = _since(t, world.started)
            self.console.print(f"{at:6.1f}s  {t.action.value:<8} step {t.to_step}: {t.reason}")
        self.printed = len(history)
