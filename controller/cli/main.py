"""The ``canarist`` command: parse arguments, call the same functions the controller calls, print.

A user's mistake is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
import yaml

from controller import __version__
from controller.api.load import Diagnostic, PolicyError, parse_yaml
from controller.api.model import ModelRollout
from controller.api.schedule import RouteState, realized_share, schedule, state_for_step
from controller.api.times import parse_time
from controller.api.units import parse_duration
from controller.cli import cluster_commands as commands
from controller.cli import demo as demo_command
from controller.cli import gate_command, gpu_command
from controller.cli.common import EXIT_INVALID, UserError, load_file, load_or_fail
from controller.cli.tables import analysis_table
from controller.traffic.render import RenderError, render
from controller.traffic.templating import default_environment
from controller.traffic.tenancy import TenancyRules
from controller.traffic.tenancy import check as tenancy_check

POLICY_SUFFIXES = (".yaml", ".yml")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="canarist")
def cli() -> None:
    """Statistical canary rollouts of ML model versions on Istio."""


# --- validate ---------------------------------------------------------------------------------


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--ignore-other-kinds",
    is_flag=True,
    help="Skip YAML documents that are not ModelRollouts (for pre-commit over all YAML files).",
)
@commands.tenancy_options
def validate(paths: tuple[Path, ...], ignore_other_kinds: bool, tenancy: TenancyRules) -> None:
    """Check ModelRollout policy files (or directories of them).

    Prints one line per problem, FILE:LINE:COL: FIELD: REASON, and exits 2 if there is any. Hosts
    and gateways are checked as the controller checks them: the rollout's own Service and 'mesh'
    (and its namespace's Gateways), plus what the --allow-* flags (the controller's) grant.
    """
    diagnostics: list[Diagnostic] = []
    count = 0
    files = list(_policy_files(paths, diagnostics))
    for path in files:
        try:
            rollouts = load_file(path, ignore_other_kinds=ignore_other_kinds)
            count += len(rollouts)
            diagnostics.extend(_tenancy_diagnostics(path, rollouts, tenancy))
        except PolicyError as exc:
            diagnostics.extend(exc.diagnostics)
    for diagnostic in diagnostics:
        click.echo(str(diagnostic))
    if diagnostics:
        sys.exit(EXIT_INVALID)
    click.echo(f"ok: {count} polic{'y' if count == 1 else 'ies'} in {len(files)} file{'' if len(files) == 1 else 's'}")


def _tenancy_diagnostics(path: Path, rollouts: list[ModelRollout], rules: TenancyRules) -> list[Diagnostic]:
    """The hosts and gateways a rollout's tenant may not use (controller.traffic.tenancy), at their lines."""
    found = [(r, p) for r in rollouts for p in tenancy_check(r, rules)]
    if not found:
        return []
    documents = [d for d in parse_yaml(path.read_text(encoding="utf-8"), str(path)) if isinstance(d.data, dict)]
    out = []
    for rollout, problem in found:
        line, col = 1, 1
        for doc in documents:
            meta = doc.data.get("metadata") if isinstance(doc.data.get("metadata"), dict) else {}
            if (meta.get("namespace", "default"), meta.get("name")) == tuple(rollout.key.split("/")):
                prefixes = [problem.path[:end] for end in range(len(problem.path), -1, -1)]
                line, col = next((doc.positions[p] for p in prefixes if p in doc.positions), (1, 1))
                break
        out.append(Diagnostic(str(path), line, col, problem.dotted, problem.reason))
    return out


def _policy_files(paths: tuple[Path, ...], diagnostics: list[Diagnostic]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in POLICY_SUFFIXES and p.is_file())
        elif path.is_file():
            yield path
        else:
            diagnostics.append(Diagnostic(str(path), 1, 1, "", "no such file or directory"))


# --- render -----------------------------------------------------------------------------------


@cli.command("render")
@click.argument("policy", type=click.Path(path_type=Path))
@click.option("--weight", type=click.IntRange(0, 100), help="Canary weight in percent (0..100).")
@click.option("--step", type=click.IntRange(0), help="Step index of the schedule (its length = promoted).")
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.option("--templates", type=click.Path(path_type=Path, file_okay=False), help="Use templates from DIR.")
def render_command(policy: Path, weight: int | None, step: int | None, output: str, templates: Path | None) -> None:
    """Print the DestinationRule and VirtualService for a point of the rollout.

    Objects come in apply order (make before break): DestinationRule, then VirtualService.
    Without --weight or --step, the first step is rendered.
    """
    if weight is not None and step is not None:
        raise UserError("give --weight or --step, not both")
    rollouts = load_or_fail(policy)
    try:
        env = default_environment(templates)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    objects: list[dict[str, Any]] = []
    for rollout in rollouts:
        state = _state(rollout, weight, step)
        try:
            objects.extend(render(rollout, state, env))
        except RenderError as exc:
            raise UserError(f"{policy}: {exc}") from None
    if output == "json":
        click.echo(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        click.echo(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True), nl=False)


def _state(rollout: ModelRollout, weight: int | None, step: int | None) -> RouteState:
    if weight is not None:
        return RouteState(weight)
    try:
        return state_for_step(rollout, step or 0)
    except ValueError as exc:
        raise UserError(f"{rollout.key}: --step: {exc}") from None


# --- analyze ----------------------------------------------------------------------------------


@cli.command()
@click.argument("policy", type=click.Path(path_type=Path))
@click.option("--prometheus", "url", required=True, envvar="PROMETHEUS_URL", help="Prometheus base URL.")
@click.option("--at", "at_text", help="Analysis time: RFC 3339 or Unix seconds (default: now).")
@click.option("--since", default="30m", show_default=True, help="How far back the windows go.")
@click.option("--step", type=click.IntRange(0), help="The step being analysed (default: the first).")
@click.option("--weight", type=click.IntRange(0, 100), help="The canary weight in effect, instead of --step.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds for each query's whole answer (connect, headers and body).",
)
@commands.prometheus_tls_options  # the same options as `canarist run`
@commands.prometheus_store_options
def analyze(  # click passes options by keyword
    *,
    policy: Path,
    url: str,
    at_text: str | None,
    since: str,
    step: int | None,
    weight: int | None,
    output: str,
    timeout: float,
    bearer_token_file: str | None,
    ca_file: str | None,
    insecure: bool,
    store: str,
    max_scrape_interval: float,
) -> None:
    """Analyse a rollout once, from what Prometheus holds, and say what canarist would do.

    Per metric: the verdict, the evidence (e-value) against its threshold, the effect and the
    request counts. Exit status: 0 advance or promote, 1 rollback, 3 hold (no data or not yet
    conclusive), 2 bad input.
    """
    from controller.edges.prometheus import PrometheusClient, PrometheusError, PrometheusSettings, observe_or_explain
    from controller.engine import oneshot

    if weight is not None and step is not None:
        raise UserError("give --weight or --step, not both")
    at = _parse_time(at_text)
    try:
        window_span = parse_duration(since)
    except ValueError as exc:
        raise UserError(f"--since: {exc}") from None
    try:
        settings = PrometheusSettings(
            url=url,
            timeout=timeout,
            bearer_token_file=bearer_token_file,
            ca_file=ca_file,
            insecure=insecure,
            store=store,
            max_scrape_interval=max_scrape_interval,
        )
    except (ValueError, PrometheusError) as exc:
        raise UserError(f"--prometheus: {exc}") from None
    rollouts = load_or_fail(policy)
    client = PrometheusClient(settings)
    worst = oneshot.Conclusion.PROMOTE
    try:
        points, windows = {}, {}
        for rollout in rollouts:
            try:
                points[rollout.key] = oneshot.point(rollout, step=step, weight=weight)
            except ValueError as exc:
                raise UserError(f"{rollout.key}: {exc}") from None
            share = realized_share(rollout, points[rollout.key].routes)
            windows[rollout.key] = oneshot.windows(rollout, share, at=at, since=window_span)
        # one look for every rollout of the file: one query per metric family, however many rollouts
        observations, error = observe_or_explain(client, rollouts, windows, at)
        for rollout in rollouts:
            where, observation = points[rollout.key], observations[rollout.key]
            evidence, decision = oneshot.judge_look(rollout, where, observation, at=at)
            doc = oneshot.look_document(
                rollout,
                where,
                observation,
                evidence,
                decision,
                at=at,
                since=window_span,
                prometheus=url,
                error=error.reason if error is not None else None,
            )
            click.echo(json.dumps(doc, indent=2) if output == "json" else analysis_table(doc))
            worst = max(worst, oneshot.conclusion(decision), key=_severity)
    finally:
        client.close()
    sys.exit(worst.exit_code)


def _severity(outcome: Any) -> int:
    """Order outcomes so that a file of several rollouts exits with its most serious one."""
    return ["promote", "advance", "hold", "rollback"].index(str(outcome))


def _parse_time(text: str | None) -> float:
    if text is None:
        return time.time()
    try:
        return float(text)
    except ValueError:
        pass
    parsed = parse_time(text)
    if parsed is not None:
        return parsed
    if parse_time(text, naive_as_utc=True) is not None:
        raise UserError(f"--at: {text!r} has no time zone (add Z or +00:00)")
    raise UserError(f"--at: {text!r} is neither RFC 3339 nor Unix seconds")


# --- schema -----------------------------------------------------------------------------------


@cli.command()
@click.option("--crd", is_flag=True, help="Print the CustomResourceDefinition instead of the JSON Schema.")
def schema(crd: bool) -> None:
    """Print the policy's JSON Schema (for editors) or the ModelRollout CRD.

    Point yaml-language-server at it with a first-line comment in each policy file:
    # yaml-language-server: $schema=<path or URL of the schema>
    """
    from controller.api import schema as schemas

    if crd:
        click.echo(yaml.safe_dump(schemas.crd(), sort_keys=False), nl=False)
    else:
        click.echo(json.dumps(schemas.policy_json_schema(), indent=2))


# --- steps ------------------------------------------------------------------------------------


@cli.command()
@click.argument("policy", type=click.Path(path_type=Path))
def steps(policy: Path) -> None:
    """List the rollout's steps: the canary weight and mirror share of each."""
    for rollout in load_or_fail(policy):
        click.echo(f"{rollout.key}:")
        plan = schedule(rollout)
        for step in plan:
            kind = "shadow" if step.is_shadow else "live"
            mirror = f", mirror {step.mirror_percent:g}%" if step.mirror_percent else ""
            click.echo(f"  step {step.index}: canary {step.canary_weight}%{mirror} ({kind})")
        click.echo(f"  step {len(plan)}: canary 100% (promoted)")


for _command in (
    commands.run,
    commands.status,
    commands.promote,
    commands.abort,
    commands.pause,
    commands.resume,
    commands.retry,
    commands.report,
    gate_command.gate,
    gpu_command.gpu_agent,
    demo_command.demo,
):
    cli.add_command(_command)


def main(prog_name: str = "canarist", *, kubectl: bool = False) -> NoReturn:
    """Entry point of the console script: every user error is one line on stderr."""
    try:
        code = cli.main(prog_name=prog_name, standalone_mode=False, obj={"kubectl": kubectl})
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message())
        sys.exit(EXIT_INVALID)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "canarist"
        click.echo(f"{command}: error: {exc.format_message()} (see '{command} --help')", err=True)
        sys.exit(EXIT_INVALID)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.Abort):
        click.echo("canarist: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def kubectl_main() -> NoReturn:
    """``kubectl-canarist``: the same commands as a kubectl plugin (``kubectl canarist status``).

    kubectl finds it on the PATH and passes every argument on. As kubectl does, a list without
    ``-n`` shows the current context's namespace (``-A`` for all of them); the kubeconfig is
    kubectl's (``$KUBECONFIG``, else ``~/.kube/config``; ``--kubeconfig``, ``--context`` as kubectl)."""
    main("kubectl canarist", kubectl=True)
