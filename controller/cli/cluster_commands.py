"""The in-cluster commands: ``run`` (the controller), ``status``, ``report`` and the steering commands.

kubectl-style options (``--kubeconfig``, ``--context``, ``-n``). Steering commands write an
annotation the controller honours on its next reconcile, recording who asked; they never touch
routes themselves, so the controller stays the only writer of weights.
"""

from __future__ import annotations

import functools
import getpass
import json
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import click
import yaml

from controller.api.fields import DNS_LABEL
from controller.cli.common import UserError
from controller.cli.tables import rollouts_table
from controller.engine.ports import Cluster, ClusterUnavailableError, NotFoundError
from controller.engine.steering import CLI_FIELD_MANAGER, COMMAND_TTL, command_annotations
from controller.judge.machine import CommandKind
from controller.traffic.tenancy import TenancyRules

F = TypeVar("F", bound=Callable[..., Any])


def kube_options(function: F) -> F:
    """--kubeconfig, --context and -n/--namespace, as kubectl has them."""
    function = click.option("-n", "--namespace", default=None, help="Namespace (default: all for lists).")(function)
    function = click.option("--context", default=None, help="The kubeconfig context to use.")(function)
    function = click.option(
        "--kubeconfig", envvar="KUBECONFIG", type=click.Path(dir_okay=False), default=None, help="Path to a kubeconfig."
    )(function)
    return function


def tenancy_options(function: F) -> F:
    """--allow-host, --allow-gateway and --no-namespace-gateways, handed on as one ``tenancy``
    keyword (:class:`controller.traffic.tenancy.TenancyRules`); a malformed value is a one-line error."""
    from controller.traffic.tenancy import rules_from_options

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        hosts, gateways = kwargs.pop("allow_hosts"), kwargs.pop("allow_gateways")
        try:
            rules = rules_from_options(hosts, gateways, namespace_gateways=kwargs.pop("namespace_gateways"))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return function(*args, tenancy=rules, **kwargs)

    options = [
        click.option(
            "--allow-host", "allow_hosts", multiple=True, metavar="NAMESPACE=PATTERN",
            help="Let rollouts in NAMESPACE ('*': any) route hosts matching PATTERN (a host, '*.suffix' or '*'; "
            "'{namespace}' stands for the rollout's) besides their own Service. Repeatable.",
        ),
        click.option(
            "--allow-gateway", "allow_gateways", multiple=True, metavar="NAMESPACE=GWNS/NAME",
            help="Let rollouts in NAMESPACE ('*': any) bind gateway GWNS/NAME (NAME may be '*'). Repeatable; "
            "'mesh' is always allowed.",
        ),
        click.option(
            "--namespace-gateways/--no-namespace-gateways", "namespace_gateways", default=True, show_default=True,
            help="Whether a rollout may bind a Gateway of its own namespace without --allow-gateway.",
        ),
    ]  # fmt: skip
    decorated: Any = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return cast(F, decorated)


def connect(kubeconfig: str | None, context: str | None) -> Cluster:
    """The Kubernetes edge, from a kubeconfig or the in-cluster service account."""
    from controller.edges.kube import KubeCluster

    try:
        return KubeCluster.from_settings(kubeconfig=kubeconfig, context=context)
    except Exception as exc:  # the client raises many kinds for a bad or missing config
        raise UserError(f"cannot reach Kubernetes: {exc}") from None


def _default_namespace(cluster: Cluster) -> str:
    """Where a command acts without -n: the kubeconfig context's namespace (as kubectl), else "default"."""
    return str(getattr(cluster, "default_namespace", None) or "default")


# --- steering ---------------------------------------------------------------------------------


def _steer(kind: CommandKind, name: str, namespace: str | None, kubeconfig: str | None, context: str | None) -> None:
    """Write the command annotations: what, who (as the API server knows us), when (its clock), an id."""
    cluster = connect(kubeconfig, context)
    ns = namespace or _default_namespace(cluster)
    who_am_i = getattr(cluster, "who_am_i", None)
    user, server_time = who_am_i() if callable(who_am_i) else (None, None)
    by = user or f"local user {getpass.getuser()}"
    at = server_time if server_time is not None else time.time()
    annotations = command_annotations(kind, by=by, command_id=str(time.time_ns()), at=at)
    try:
        cluster.annotate_rollout(ns, name, annotations, field_manager=CLI_FIELD_MANAGER)
    except NotFoundError:
        raise UserError(f"modelrollout {ns}/{name} not found") from None
    except ClusterUnavailableError as exc:
        raise UserError(f"API server unavailable: {exc.reason}") from None
    ttl = round(COMMAND_TTL / 60)
    click.echo(
        f"{ns}/{name}: {kind.value} requested; the controller acts on its next reconcile (it expires in {ttl} min)"
    )


def _steering_command(kind: CommandKind, help_text: str) -> click.Command:
    @click.command(kind.value, help=help_text)
    @click.argument("name")
    @kube_options
    def command(name: str, namespace: str | None, kubeconfig: str | None, context: str | None) -> None:
        _steer(kind, name, namespace, kubeconfig, context)

    return command


@click.command(help="Skip the current step's analysis (or, with --full, go straight to 100%).")
@click.argument("name")
@click.option("--full", is_flag=True, help="Promote to 100% at once.")
@kube_options
def promote(*, name: str, full: bool, namespace: str | None, kubeconfig: str | None, context: str | None) -> None:
    _steer(CommandKind.PROMOTE_FULL if full else CommandKind.PROMOTE, name, namespace, kubeconfig, context)


abort = _steering_command(CommandKind.ABORT, "Roll back now: 100% to stable, then clean up.")
pause = _steering_command(CommandKind.PAUSE, "Hold the current weights until resumed (SLO breaches still roll back).")
resume = _steering_command(CommandKind.RESUME, "Resume a paused rollout; its step deadline starts afresh.")
retry = _steering_command(CommandKind.RETRY, "Start a failed rollout again from its first step.")


# --- status -----------------------------------------------------------------------------------


@click.command()
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True)
@click.option("--watch", "-w", is_flag=True, help="Keep refreshing a live view (Ctrl-C to stop).")
@click.option(
    "-A",
    "--all-namespaces",
    is_flag=True,
    help="Every namespace (the default of `canarist status`; `kubectl canarist status` shows the context's).",
)
@kube_options
@click.pass_context
def status(  # click passes options by keyword
    ctx: click.Context,
    *,
    name: str | None,
    output: str,
    watch: bool,
    all_namespaces: bool,
    namespace: str | None,
    kubeconfig: str | None,
    context: str | None,
) -> None:
    """Show rollouts: phase, step, weights, the evidence behind the last decision, recent decisions."""
    if all_namespaces and namespace:
        raise UserError("-A and -n: choose one")
    cluster = connect(kubeconfig, context)
    if name is None and namespace is None and not all_namespaces and (ctx.obj or {}).get("kubectl"):
        namespace = _default_namespace(cluster)  # kubectl's convention: the context's namespace

    def fetch() -> list[dict[str, Any]]:
        try:
            if name is not None:
                return [cluster.get_rollout(namespace or _default_namespace(cluster), name)]
            return cluster.list_rollouts(namespace)[0]
        except NotFoundError:
            raise UserError(f"modelrollout {namespace or _default_namespace(cluster)}/{name} not found") from None
        except ClusterUnavailableError as exc:
            raise UserError(f"API server unavailable: {exc.reason}") from None

    if output != "table":
        click.echo(render_documents(fetch(), output), nl=False)
        return
    if not watch:
        click.echo(rollouts_table(fetch(), detailed=name is not None))
        return
    from rich.live import Live
    from rich.text import Text

    try:
        with Live(Text(rollouts_table(fetch(), detailed=name is not None)), refresh_per_second=1) as live:
            while True:
                time.sleep(2)
                live.update(Text(rollouts_table(fetch(), detailed=name is not None)))
    except KeyboardInterrupt:
        return


def render_documents(objects: list[dict[str, Any]], output: str) -> str:
    """Rollouts' stored statuses as JSON or YAML, whole: both escape every control character and
    (JSON: all non-ASCII, YAML: all non-printable) character, so user text prints as data."""
    docs = [_summary(o) for o in objects]
    return json.dumps(docs, indent=2) + "\n" if output == "json" else yaml.safe_dump(docs, sort_keys=False)


def _summary(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    return {"name": metadata.get("name"), "namespace": metadata.get("namespace"), "status": obj.get("status") or {}}


# --- report ------------------------------------------------------------------------------------


@click.command()
@click.argument("target")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for index.html and its plots (created if missing).",
)
@kube_options
def report(  # click passes options by keyword
    *, target: str, out: Path, namespace: str | None, kubeconfig: str | None, context: str | None
) -> None:
    """Write an HTML report with plots of a rollout: its weights, latency, evidence and decisions.

    TARGET is a file holding the ModelRollout with its status (the output of kubectl get
    modelrollout NAME -o json, or -o yaml), or the name of a rollout to read from the cluster.
    Prints the path of the page.
    """
    path = Path(target)
    if not path.is_file() and (path.exists() or not re.fullmatch(DNS_LABEL, target)):
        raise UserError(f"{target}: not a file" if path.exists() else f"{target}: no such file")
    from controller.report import page as reports  # matplotlib: only for this command

    try:
        obj = reports.read_object(path) if path.is_file() else _fetch(target, namespace, kubeconfig, context)
        written = reports.build_report(obj, out)
    except reports.ReportError as exc:
        raise UserError(str(exc)) from None
    click.echo(str(written.index))


def _fetch(name: str, namespace: str | None, kubeconfig: str | None, context: str | None) -> dict[str, Any]:
    cluster = connect(kubeconfig, context)
    ns = namespace or _default_namespace(cluster)
    try:
        return cluster.get_rollout(ns, name)
    except NotFoundError:
        raise UserError(f"modelrollout {ns}/{name} not found (and no file of that name here)") from None
    except ClusterUnavailableError as exc:
        raise UserError(f"API server unavailable: {exc.reason}") from None


# --- run ---------------------------------------------------------------------------------------


def prometheus_tls_options(function: F) -> F:
    """--bearer-token-file, --ca-file and --insecure: how to reach Prometheus (``run`` and ``analyze``)."""
    function = click.option("--insecure", is_flag=True, help="Skip TLS verification (testing only).")(function)
    function = click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), help="Trust this CA for https.")(
        function
    )
    function = click.option(
        "--bearer-token-file",
        type=click.Path(exists=True, dir_okay=False),
        help="Send this token (e.g. a service account's).",
    )(function)
    return function


def prometheus_store_options(function: F) -> F:
    """--prometheus-store and --max-scrape-interval: which PromQL store answers (``run`` and ``analyze``)."""
    function = click.option(
        "--max-scrape-interval",
        type=click.FloatRange(min=0.001),
        default=30.0,
        show_default=True,
        help="VictoriaMetrics: a window counts only with a sample of each counter this many seconds before it.",
    )(function)
    function = click.option(
        "--prometheus-store",
        "store",
        type=click.Choice(["prometheus", "victoria-metrics"]),
        default="prometheus",
        show_default=True,
        envvar="PROMETHEUS_STORE",
        help="The PromQL store behind --prometheus.",
    )(function)
    return function


@click.command()
@kube_options
@click.option("--prometheus", "url", envvar="PROMETHEUS_URL", required=True, help="Prometheus base URL.")
@prometheus_tls_options
@prometheus_store_options
@click.option("--policies", type=click.Path(file_okay=False, path_type=Path), help="GitOps: apply policies from DIR.")
@click.option("--leader-elect", is_flag=True, help="Elect a leader on a Lease (for several replicas).")
@click.option(
    "--shards",
    type=click.IntRange(0, 1024),
    default=0,
    show_default=True,
    help="Share the rollouts with the other replicas over this many shard Leases (0: no sharding; "
    "every replica must be given the same count).",
)
@click.option("--lease-namespace", envvar="POD_NAMESPACE", default="canarist-system", show_default=True)
@click.option("--lease-seconds", type=click.IntRange(10, 600), default=15, show_default=True, help="Lease duration.")
@click.option("--identity", envvar="POD_NAME", default=None, help="This replica's name in the Lease.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--metrics-bind-address",
    default="127.0.0.1",
    show_default=True,
    help="Address /metrics, /healthz and /readyz listen on (0.0.0.0 in a pod, for probes and scrapes).",
)
@click.option(
    "--tick-deadline",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    help="Seconds after which a pass starts no more reconciles; /healthz fails after three without a pass.",
)
@click.option("--templates", type=click.Path(path_type=Path, file_okay=False), help="Use templates from DIR.")
@click.option(
    "--notify",
    "notify_sinks",
    multiple=True,
    metavar="TYPE=FILE",
    help="A default sink for every rollout's decisions: TYPE (webhook, slack, teams, discord, email, apprise) "
    "and the FILE holding its URL (a mounted Secret key; read at each delivery). Repeatable.",
)
@click.option(
    "--notify-events",
    default="",
    metavar="EVENTS",
    help="What the default sinks announce, comma-separated (Started, Advanced, Held, Paused, Resumed, Promoted, "
    "Completed, RolledBack, GateFailed, SloBreached, Restarted); default: all but Held.",
)
@click.option(
    "--report-url",
    default=None,
    metavar="TEMPLATE",
    help="The link notifications give to a rollout's report, with {namespace} and {name}.",
)
@tenancy_options
def run(  # click passes options by keyword
    *,
    tenancy: TenancyRules,
    namespace: str | None,
    kubeconfig: str | None,
    context: str | None,
    url: str,
    bearer_token_file: str | None,
    ca_file: str | None,
    insecure: bool,
    store: str,
    max_scrape_interval: float,
    policies: Path | None,
    leader_elect: bool,
    shards: int,
    lease_namespace: str,
    lease_seconds: int,
    identity: str | None,
    metrics_port: int,
    metrics_bind_address: str,
    tick_deadline: float,
    templates: Path | None,
    notify_sinks: tuple[str, ...],
    notify_events: str,
    report_url: str | None,
) -> None:
    """Run the controller: watch ModelRollouts and take each one step by step."""
    from controller.edges.prometheus import PrometheusError, PrometheusSettings
    from controller.manager.loop import Manager
    from controller.manager.ops import ControllerMetrics, serve
    from controller.manager.wiring import gate_probe, metrics_source
    from controller.traffic.templating import default_environment

    logging.basicConfig(level=logging.INFO, format='{"time":"%(asctime)s","level":"%(levelname)s","msg":"%(message)s"}')
    try:
        settings = PrometheusSettings(
            url=url,
            bearer_token_file=bearer_token_file,
            ca_file=ca_file,
            insecure=insecure,
            store=store,
            max_scrape_interval=max_scrape_interval,
        )
        source = metrics_source("prometheus", settings)
        env = default_environment(templates)
    except (ValueError, PrometheusError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    defaults = default_sinks(notify_sinks, notify_events, report_url)
    if leader_elect and shards:
        raise UserError("--leader-elect and --shards: choose one (sharded replicas need no leader)")
    cluster = connect(kubeconfig, context)
    elector, shard_set = None, None
    name = identity or f"{getpass.getuser()}-{time.time_ns()}"
    api_client = cluster.api_client  # type: ignore[attr-defined]
    if leader_elect:
        from controller.edges.kube.leader import LeaderElector

        elector = LeaderElector(api_client, lease_namespace, "canarist-controller", name, lease_seconds=lease_seconds)
    if shards:
        from controller.edges.kube.shards import ShardSet

        shard_set = ShardSet(api_client, lease_namespace, name, shards=shards, lease_seconds=lease_seconds)
    ops = ControllerMetrics(stall_after=3 * tick_deadline + 5.0)  # a pass, then at most 5 s of waiting
    try:
        server = serve(ops, metrics_port, metrics_bind_address)
    except OSError as exc:
        raise UserError(f"--metrics-bind-address {metrics_bind_address}:{metrics_port}: {exc.strerror}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    manager = Manager(
        cluster,
        source,
        env,
        time.time,
        namespace=namespace,
        elector=elector,
        shards=shard_set,
        observer=ops,
        policies=policies,
        tick_deadline=tick_deadline,
        act_budget=lease_seconds / 3,  # a reconcile's share of the lease; each write is fenced as well
        gates=gate_probe(),
    )
    manager.tenancy = tenancy
    logging.getLogger("canarist").info("tenancy: %s", tenancy.describe())
    informer, notifier = _background_edges(cluster, defaults, ops.notified, report_url)
    manager.notifier = notifier
    try:
        manager.run(stop)
    finally:
        informer.stop()
        notifier.close(timeout=5.0)
        server.shutdown()
        server.server_close()


def _background_edges(
    cluster: Cluster, defaults: list[Any], count: Callable[[str], None], report_url: str | None
) -> tuple[Any, Any]:
    """The controller's threads beside its loop, started: the VirtualService copy the conflict check
    reads (edges.kube.informer) and the notifier's worker (edges.notify)."""
    from controller.edges.kube.informer import Informer
    from controller.edges.notify import Notifier

    informer = Informer(cluster.api_client).start()  # type: ignore[attr-defined]
    cluster.virtual_services = informer  # type: ignore[attr-defined]
    read_secret = cluster.read_secret  # type: ignore[attr-defined]
    notifier = Notifier(read_secret=read_secret, defaults=defaults, count=count, report_url=report_url)
    return informer, notifier.start()


def default_sinks(specs: tuple[str, ...], events: str, report_url: str | None) -> list[Any]:
    """The ``--notify TYPE=FILE`` sinks announcing ``--notify-events``; a bad option (or a
    ``--report-url`` with another field than {namespace} and {name}) is a UserError."""
    from controller.api.notify import DEFAULT_EVENTS, NotifyEvent, SinkType
    from controller.edges.notify import file_sink

    if report_url is not None:
        try:
            report_url.format(namespace="ns", name="name")
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError(f"--report-url: only {{namespace}} and {{name}} may be filled in ({exc})") from None
    by_name = {e.value.lower(): e for e in NotifyEvent}
    words = [word.strip() for word in events.split(",") if word.strip()]
    unknown = [word for word in words if word.lower() not in by_name]
    if unknown:
        known = ", ".join(e.value for e in NotifyEvent)
        raise UserError(f"--notify-events: unknown event {unknown[0]!r} (one of {known})")
    wanted = tuple(by_name[word.lower()] for word in words) or DEFAULT_EVENTS
    types = {t.value.lower(): t for t in SinkType}
    sinks = []
    for i, spec in enumerate(specs):
        kind, _, path = spec.partition("=")
        if kind.strip().lower() not in types or not path.strip():
            raise UserError(f"--notify {spec!r}: expected TYPE=FILE with TYPE one of {', '.join(sorted(types))}")
        sinks.append(file_sink(f"default-{i}", types[kind.strip().lower()], Path(path.strip()), wanted))
    return sinks
