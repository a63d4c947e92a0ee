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

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from controller.demo.run import World
from controller.demo.scenarios import CANARY, STABLE, Scenario

BAR = 24


def evidence_bar(e_value: float | None, threshold: float | None) -> Text:
    """How far an e-value has come toward its threshold, on the log scale the decision uses."""
    if not e_value or not threshold or threshold <= 1:
        return Text("·" * BAR, style="dim")
    progress = min(max(math.log(max(e_value, 1e-300)) / math.log(threshold), 0.0), 1.0)
    filled = round(progress * BAR)
    return Text("█" * filled + "·" * (BAR - filled), style="bold" if progress >= 1 else "")


def _number(value: Any, *, percent: bool = False) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:+.2%}" if percent else f"{value:.3g}"


def metrics_table(metrics: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(expand=True, show_edge=False, pad_edge=False)
    for column in ("metric", "verdict", "regression evidence", "no-worse evidence", "canary - stable", "requests"):
        table.add_column(column, no_wrap=True)
    style = {"Pass": "green", "Fail": "red", "Inconclusive": "yellow", "NoData": "dim"}
    for m in metrics:
        requests = m.get("requests") or {}
        interval = m.get("interval")
        estimate = _number(m.get("estimate"), percent=True)
        if isinstance(interval, list) and len(interval) == 2 and None not in interval:
            estimate += f" [{_number(interval[0], percent=True)}, {_number(interval[1], percent=True)}]"
        table.add_row(
            str(m.get("name", "?")),
            Text(str(m.get("verdict", "?")), style=style.get(str(m.get("verdict")), "")),
            Text.assemble(evidence_bar(m.get("eValue"), m.get("threshold")), f" {_number(m.get('eValue'))}"),
            Text.assemble(
                evidence_bar(m.get("eValueNonInferiority"), m.get("threshold")),
                f" {_number(m.get('eValueNonInferiority'))}",
            ),
            estimate,
            f"{requests.get('stable', 0)} / {requests.get('canary', 0)}",
        )
    return table


def decisions_table(history: Sequence[Mapping[str, Any]], started: float, limit: int = 6) -> Table:
    from controller.status import parse_timestamp

    table = Table(expand=True, show_edge=False, pad_edge=False, show_header=False)
    table.add_column("t", no_wrap=True, width=6)
    table.add_column("action", no_wrap=True, width=9)
    table.add_column("reason", overflow="fold")
    for t in list(history)[-limit:]:
        at = parse_timestamp(t.get("at"), started) - started
        table.add_row(f"{at:5.0f}s", str(t.get("action")), str(t.get("reason", "")))
    return table


def frame(world: World, scenario: Scenario, now: float | None = None) -> RenderableType:
    """One picture of the rollout as it stands."""
    now = time.time() if now is None else now
    status = world.rollout().get("status") or {}
    served = world.haproxy.served()
    weight = int(status.get("canaryWeight", 0) or 0)
    steps = (world.rollout().get("spec") or {}).get("strategy", {}).get("steps", [])
    head = Table.grid(expand=True)
    head.add_column()
    head.add_column(justify="right")
    head.add_row(
        Text.assemble(("canarist demo ", "bold"), f"· scenario {scenario.name}: {scenario.summary}"),
        f"{now - world.started:5.0f}s",
    )
    split = round(weight / 100 * 40)
    head.add_row(
        Text.assemble(
            f"phase {status.get('phase', 'Initializing')} · step {status.get('currentStep', 0) + 1}/{len(steps)} ",
            (f"{STABLE} {100 - weight:3d}% ", "cyan"),
            ("▇" * (40 - split), "cyan"),
            ("▇" * split, "magenta"),
            (f" {weight:3d}% {CANARY}", "magenta"),
        ),
        f"served {STABLE} {served.get(STABLE, 0)} · {CANARY} {served.get(CANARY, 0)}",
    )
    message = Text(str(status.get("message", "")), style="italic")
    body = Group(
        head,
        message,
        Panel(metrics_table(status.get("metrics") or []), title="evidence (bars: log e-value / log threshold)"),
        Panel(decisions_table(status.get("history") or [], world.started), title="decisions"),
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

    def __call__(self, world: World) -> None:
        if self.live is not None:
            self.live.update(frame(world, self.scenario))
            return
        from controller.status import parse_timestamp

        history = (world.rollout().get("status") or {}).get("history") or []
        for t in history[self.printed :]:
            at = parse_timestamp(t.get("at"), world.started) - world.started
            self.console.print(f"{at:6.1f}s  {t.get('action'):<8} step {t.get('toStep')}: {t.get('reason')}")
        self.printed = len(history)
