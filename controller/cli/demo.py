"""``canarist demo``: the command line around :func:`controller.sandbox.demo.run.run_demo` (imported when run)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from controller.cli.common import UserError
from controller.sandbox.demo.scenarios import CANARY, NAME, SCENARIOS, SERVING

if TYPE_CHECKING:
    from controller.sandbox.demo.run import DemoResult

EXIT_UNDECIDED = 1


@click.command()
@click.option(
    "--scenario",
    type=click.Choice(list(SCENARIOS)),
    default="good",
    show_default=True,
    help="What the canary does: " + "; ".join(f"{s.name}: {s.summary}" for s in SCENARIOS.values()),
)
@click.option("--speed", type=click.FloatRange(0.1, 10.0), default=1.0, show_default=True, help="Time compression.")
@click.option("--rate", type=click.FloatRange(10, 1000), default=150.0, show_default=True, help="Requests per second.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("canarist-demo"),
    show_default=True,
    help="Where the report goes.",
)
@click.option("--budget", type=click.FloatRange(10, 3600), default=170.0, show_default=True, help="Seconds allowed.")
@click.option(
    "--serving",
    type=click.Choice(SERVING),
    default="builtin",
    show_default=True,
    help="How the versions are served: in-process, or each by a real Triton with a pre-traffic gate "
    "(bad-signature always uses Triton).",
)
def demo(*, scenario: str, speed: float, rate: float, seed: int, out: Path, budget: float, serving: str) -> None:
    """A whole model rollout on this machine: real model servers, haproxy, Prometheus, the controller.

    Ends promoted (good) or rolled back (the others), prints a summary, writes a report to --out,
    and stops every process it started. Exit 0 once the rollout is decided; 1 if it was not
    decided within --budget seconds.
    """
    # Imported here: the controller, its edges and matplotlib would slow every other command's start.
    from controller.report.page import ReportError
    from controller.sandbox.demo.haproxy import HaproxyError
    from controller.sandbox.demo.processes import PartMissingError, StartError
    from controller.sandbox.demo.run import DemoOptions, run_demo
    from controller.sandbox.demo.view import LiveView

    console = Console()
    chosen = SCENARIOS[scenario]
    options = DemoOptions(chosen, speed=speed, rate=rate, seed=seed, out=out, budget=budget, serving=serving)
    print_how_to_watch(console, options.kubeconfig.resolve())
    try:
        with LiveView(chosen, console) as view:
            result = run_demo(options, show=view)
    except (PartMissingError, StartError, HaproxyError, ReportError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    print_summary(console, result)
    if result.phase not in ("Succeeded", "Failed"):
        raise SystemExit(EXIT_UNDECIDED)


def print_how_to_watch(console: Console, kubeconfig: Path) -> None:
    """The line that says how to watch and steer the running demo from another terminal."""
    console.print(
        f"From another terminal, while it runs: export KUBECONFIG={kubeconfig}; "
        f"kubectl get modelrollouts -w  (or canarist status --watch; canarist pause|abort {NAME})",
        highlight=False,
        soft_wrap=True,
    )


def print_summary(console: Console, result: DemoResult) -> None:
    outcome = {"Succeeded": "promoted", "Failed": "rolled back"}.get(result.phase, f"not decided ({result.phase})")
    console.print()
    console.rule(f"[bold]{result.scenario}: {outcome}")
    console.print(f"reason: {result.reason}")
    if result.seconds_to_decide is not None:
        console.print(
            f"decided {result.seconds_to_decide:.0f}s after the first step, "
            f"after {result.canary_requests_to_decide} requests to the canary ({CANARY})"
        )
    console.print(
        f"load: {result.loadgen.get('sent', '?')} requests, {result.routing_failures} failed because of routing; "
        f"refused routes: {len(result.refused_routes)}"
    )
    if result.triton_inferences is not None:
        counts = ", ".join(f"{v} {n}" for v, n in result.triton_inferences.items())
        console.print(f"Triton's own inference counts: {counts}", highlight=False)
    for check in result.splits:
        if check.total >= 100:
            wanted = check.weights.get(CANARY, 0)
            console.print(
                f"  split at {wanted:3d}% canary: {check.share(CANARY):6.1%} actual over {check.total} requests",
                highlight=False,
            )
    if not result.expected:
        console.print(
            "[yellow]not the outcome this scenario expects: with alpha = 0.05 a false rollback can happen, "
            "rarely; run it again with another --seed"
        )
    if result.report is not None:
        console.print(f"report: {result.report}")
