"""Tenants are isolated (DESIGN.md section 4): hosts, gateways, exportTo and cross-namespace conflicts.

Three levels: the pure rules (:mod:`controller.traffic.tenancy`) as properties over generated hosts,
gateways, namespaces and grants; the conflict rule as a table, run against the real edge (the
official client and the local API server); and the reconciler, which must hold a refused rollout
with the reason and never record a step it cannot route.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.api.model import ModelRollout
from controller.api.schedule import RouteState
from controller.api.status import Action, Phase
from controller.edges.kube import KubeCluster, retry_policy
from controller.engine.ports import EdgeFailure, RouteConflictError
from controller.engine.reconcile import reconcile
from controller.metrics.samples import Observation, Window
from controller.sandbox.localapi import LocalApiServer, local_api_server
from controller.traffic.render import render
from controller.traffic.templating import default_environment
from controller.traffic.tenancy import (
    DEFAULT_RULES,
    Grant,
    TenancyRules,
    check,
    export_to,
    gateway_allowed,
    overlaps,
    parse_grant,
    rules_from_options,
    without_hosts,
)
from tests.memory_cluster import MemoryCluster

ROOT = Path(__file__).resolve().parent.parent
POLICY = yaml.safe_load((ROOT / "policies/fraud-detector-istio.yaml").read_text())
ENV = default_environment()
ISTIO = "networking.istio.io"
EVERYTHING = TenancyRules(hosts=(Grant("*", "*"),), gateways=())  # an administrator who grants every host


def policy(namespace: str = "team-a", service: str = "fraud-detector", **fields: Any) -> dict[str, Any]:
    """The example policy moved to ``namespace``, with ``spec.service`` fields replaced."""
    out: dict[str, Any] = copy.deepcopy(POLICY)
    out.pop("status", None)
    out["metadata"]["namespace"] = namespace
    out["spec"]["service"]["name"] = service
    out["spec"]["service"].update(fields)
    return out


def rollout(**kwargs: Any) -> ModelRollout:
    return ModelRollout.model_validate(policy(**kwargs))


# --- generated hosts, gateways, namespaces, grants ---------------------------------------------

NAMESPACES = st.sampled_from(["team-a", "team-b", "payments", "prod", "istio-system"])
SERVICES = st.sampled_from(["fraud-detector", "payments", "ranker", "api"])
DOMAINS = st.sampled_from(["example.com", "a.example.com", "corp.internal", "cluster.local", "svc.cluster.local"])


@st.composite
def hosts(draw: st.DrawFn) -> str:
    """Any host a rollout author could write: services of any namespace in every form, external
    names, and wildcards over both."""
    service, namespace, domain = draw(SERVICES), draw(NAMESPACES), draw(DOMAINS)
    forms = [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        f"{service}.{domain}",
        f"*.{namespace}.svc.cluster.local",
        f"*.{namespace}",
        f"*.{domain}",
        domain,
    ]
    return draw(st.sampled_from(forms))


@st.composite
def gateways(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(["public-gateway", "gw", "internal"]))
    return draw(st.sampled_from(["mesh", name, f"{draw(NAMESPACES)}/{name}"]))


@st.composite
def grants(draw: st.DrawFn) -> TenancyRules:
    namespace = st.one_of(st.just("*"), NAMESPACES)
    host_patterns = st.one_of(hosts().filter(lambda h: "." in h), st.just("*"), st.just("*.{namespace}.example.com"))
    gateway_patterns = st.builds(lambda ns, n: f"{ns}/{n}", NAMESPACES, st.sampled_from(["public-gateway", "*"]))
    return TenancyRules(
        hosts=tuple(draw(st.lists(st.builds(Grant, namespace, host_patterns), max_size=3))),
        gateways=tuple(draw(st.lists(st.builds(Grant, namespace, gateway_patterns), max_size=2))),
        namespace_gateways=draw(st.booleans()),
    )


def _granted(host: str, namespace: str, rules: TenancyRules) -> bool:
    """The oracle, written from the rule's words: a grant for the namespace whose pattern is the
    host itself, '*', or '*.suffix' with the host (or the host's wildcard) strictly below suffix."""
    name = host if "." in host else f"{host}.{namespace}.svc.cluster.local"
    for grant in rules.hosts:
        if grant.namespace not in ("*", namespace):
            continue
        pattern = grant.pattern.replace("{namespace}", namespace)
        if pattern in ("*", name):
            return True
        below = r"(\*\.)?([a-z0-9-]+\.)+" if not name.startswith("*.") else r"\*\.([a-z0-9-]+\.)*"
        if pattern.startswith("*.") and re.fullmatch(below + re.escape(pattern[2:]), name):
            return True
    return False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    namespace=NAMESPACES,
    service=SERVICES,
    host=st.one_of(st.none(), hosts()),
    extra=st.lists(hosts(), max_size=3, unique=True),
    gws=st.lists(gateways(), min_size=1, max_size=3, unique=True),
    rules=grants(),
)
def test_a_rollout_never_routes_a_host_outside_its_service_unless_granted(
    *, namespace: str, service: str, host: str | None, extra: list[str], gws: list[str], rules: TenancyRules
) -> None:
    body = policy(namespace, service, hosts=extra, gateways=gws, **({"host": host} if host else {}))
    candidate = ModelRollout.model_validate(body)
    problems = check(candidate, rules)
    own = {service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"}
    refused_paths = {p.path for p in problems}
    fields: list[tuple[tuple[str | int, ...], str | None]] = [(("spec", "service", "host"), host)]
    fields += [(("spec", "service", "hosts", i), h) for i, h in enumerate(extra)]
    for path, value in fields:
        if value is None:
            continue
        assert (path in refused_paths) == (value not in own and not _granted(value, namespace, rules)), (path, value)
    for i, gateway in enumerate(gws):
        gwns = gateway.partition("/")[0] if "/" in gateway else namespace
        name = gateway.rpartition("/")[2]
        granted = any(
            g.namespace in ("*", namespace) and g.pattern in (f"{gwns}/{name}", f"{gwns}/*") for g in rules.gateways
        )
        allowed = gateway == "mesh" or (gwns == namespace and rules.namespace_gateways) or granted
        assert ((("spec", "service", "gateways", i)) in refused_paths) == (not allowed), gateway
    if not problems:  # what is accepted renders only own or granted hosts, with a scoped exportTo
        dr, vs = render(candidate, RouteState(5), ENV)
        for rendered in (dr["spec"]["host"], *vs["spec"]["hosts"]):
            assert rendered in own or _granted(rendered, namespace, rules), rendered
        assert dr["spec"]["exportTo"] == vs["spec"]["exportTo"] == export_to(candidate)


@settings(max_examples=200, deadline=None)
@given(namespace=NAMESPACES, service=SERVICES, extra=st.lists(hosts(), max_size=3, unique=True))
def test_the_default_rules_accept_exactly_the_rollouts_own_service(
    namespace: str, service: str, extra: list[str]
) -> None:
    candidate = rollout(namespace=namespace, service=service, hosts=extra)
    own = {f"{service}.{namespace}", f"{service}.{namespace}.svc", service, f"{service}.{namespace}.svc.cluster.local"}
    expected = {("spec", "service", "hosts", i) for i, h in enumerate(extra) if h not in own}
    assert {p.path for p in check(candidate, DEFAULT_RULES)} == expected


@pytest.mark.parametrize(
    ("gateways", "namespace_gateways", "refused"),
    [
        (["mesh"], True, []),
        (["mesh", "gw"], True, []),  # a Gateway of the rollout's own namespace
        (["team-a/gw"], True, []),
        (["team-a/gw"], False, [0]),
        (["istio-system/public-gateway"], True, [0]),
        (["mesh", "istio-system/public-gateway", "team-b/gw"], True, [1, 2]),
    ],
)
def test_gateways_mesh_and_own_namespace_only_by_default(
    gateways: list[str], namespace_gateways: bool, refused: list[int]
) -> None:
    rules = TenancyRules(namespace_gateways=namespace_gateways)
    problems = check(rollout(gateways=gateways), rules)
    assert [p.path for p in problems] == [("spec", "service", "gateways", i) for i in refused]


def test_a_granted_gateway_and_host_pass_only_for_the_granted_namespace() -> None:
    rules = rules_from_options(
        ["team-a=*.team-a.example.com", "*=shared.example.com"], ["team-a=istio-system/public-gateway"]
    )
    ok = rollout(hosts=["api.team-a.example.com", "*.team-a.example.com", "shared.example.com"],
                 gateways=["istio-system/public-gateway"])  # fmt: skip
    assert check(ok, rules) == []
    other = rollout(namespace="team-b", hosts=["api.team-a.example.com", "shared.example.com"],
                    gateways=["istio-system/public-gateway"])  # fmt: skip
    assert [p.dotted for p in check(other, rules)] == ["spec.service.hosts[0]", "spec.service.gateways[0]"]
    assert gateway_allowed("istio-system/anything", "team-a", rules_from_options([], ["*=istio-system/*"]))


def test_the_namespace_placeholder_gives_each_team_its_own_subdomain() -> None:
    rules = rules_from_options(["*=*.{namespace}.example.com"])
    assert check(rollout(namespace="team-a", hosts=["x.team-a.example.com"]), rules) == []
    assert len(check(rollout(namespace="team-b", hosts=["x.team-a.example.com"]), rules)) == 1


@pytest.mark.parametrize(
    "text",
    ["payments.example.com", "=a.example.com", "team-a=", "Team_A=a.example.com", "a=http://x", "a=a..b"],
)
def test_a_malformed_host_grant_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="--allow-host") as refused:
        parse_grant(text, gateway=False)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("text", ["a=gw", "a=ns/", "a=/gw", "a=ns/gw/x", "a=n_s/gw"])
def test_a_malformed_gateway_grant_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--allow-gateway"):
        parse_grant(text, gateway=True)


@pytest.mark.parametrize(
    ("gateways", "expected"),
    [
        (["mesh"], ["*"]),
        (["mesh", "istio-system/gw"], ["*"]),
        (["gw"], ["."]),
        (["team-a/gw", "istio-system/gw", "edge/gw2"], [".", "edge", "istio-system"]),
    ],
)
def test_export_to_is_everywhere_for_mesh_and_the_gateways_namespaces_otherwise(
    gateways: list[str], expected: list[str], tmp_path: Path
) -> None:
    candidate = rollout(gateways=gateways)
    assert export_to(candidate) == expected
    objects = render(candidate, RouteState(5), ENV)
    assert all(o["spec"]["exportTo"] == expected for o in objects)
    validator = Path("/work/shared/tools/istio-validate")
    if validator.exists():  # Istio's own schema accepts it (the shared tool, where this machine has it)
        import subprocess
        import sys

        out = tmp_path / "objects.yaml"
        out.write_text(yaml.safe_dump_all(objects))
        proc = subprocess.run([sys.executable, str(validator), str(out)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the command line: canarist validate and canarist run ---------------------------------------


def _invoke(*args: str) -> Any:
    from click.testing import CliRunner

    from controller.cli.main import cli

    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"canarist {' '.join(args)} raised {result.exception!r}\n{result.output}")
    return result


def test_validate_names_the_field_and_line_of_a_host_or_gateway_the_tenant_may_not_use(tmp_path: Path) -> None:
    body = policy("team-a", hosts=["payments.prod.svc.cluster.local"], gateways=["istio-system/public-gateway"])
    path = tmp_path / "rollout.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    lines = path.read_text().splitlines()
    result = _invoke("validate", str(path))
    assert result.exit_code == 2
    out = result.output.splitlines()
    assert len(out) == 2 and "Traceback" not in result.output
    host_line = next(i for i, line in enumerate(lines, 1) if "payments.prod.svc.cluster.local" in line)
    assert out[0].startswith(f"{path}:{host_line}:") and ": spec.service.hosts[0]: " in out[0]
    assert "--allow-host" in out[0] and ": spec.service.gateways[0]: " in out[1]
    granted = _invoke(
        "validate", str(path),
        "--allow-host", "team-a=payments.prod.svc.cluster.local", "--allow-gateway", "*=istio-system/*",
    )  # fmt: skip
    assert granted.exit_code == 0 and granted.output == "ok: 1 policy in 1 file\n", granted.output


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_malformed_grant_is_one_line_and_exit_2(command: str, tmp_path: Path) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_text(yaml.safe_dump(policy(), sort_keys=False))
    args = [str(path)] if command == "validate" else ["--prometheus", "http://127.0.0.1:1"]
    result = _invoke(command, *args, "--allow-host", "payments.example.com")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "canarist: error: --allow-host 'payments.example.com': expected NAMESPACE=PATTERN (NAMESPACE may be '*')"
    ]


# --- host overlap: the conflict rule -----------------------------------------------------------

#: (namespace of the existing VirtualService, its host, the rollout's namespace, the rollout's host, conflict?)
OVERLAPS = [
    ("payments", "payments.prod.svc.cluster.local", "team-a", "payments.prod.svc.cluster.local", True),
    ("prod", "payments", "team-a", "payments.prod.svc.cluster.local", True),  # short name in its namespace
    ("prod", "payments", "team-a", "payments.prod", True),
    ("prod", "payments", "team-a", "payments.prod.svc", True),
    ("payments", "payments.prod", "team-a", "payments.prod.svc.cluster.local", True),
    ("team-b", "payments", "team-a", "payments", False),  # two namespaces' own Services
    ("team-b", "payments", "team-a", "payments.team-b.svc.cluster.local", True),
    ("edge", "*.example.com", "team-a", "a.example.com", True),
    ("edge", "*.example.com", "team-a", "a.b.example.com", True),
    ("edge", "*.example.com", "team-a", "example.com", False),
    ("edge", "*.example.com", "team-a", "*.b.example.com", True),
    ("edge", "a.example.com", "team-a", "*.example.com", True),
    ("edge", "*.a.example.com", "team-a", "*.b.example.com", False),
    ("edge", "*", "team-a", "fraud-detector", True),
    ("edge", "a.example.com", "team-a", "b.example.com", False),
    ("edge", "xexample.com", "team-a", "*.example.com", False),  # a suffix, not a subdomain
    ("edge", "A.Example.COM", "team-a", "a.example.com", True),
    ("mesh-wide", "*.cluster.local", "team-a", "fraud-detector", True),
    ("mesh-wide", "*.prod.svc.cluster.local", "team-a", "payments.prod", True),
    ("mesh-wide", "*.prod", "team-a", "payments.prod.svc.cluster.local", True),
    ("mesh-wide", "*.team-b.svc.cluster.local", "team-a", "fraud-detector", False),
]


@pytest.mark.parametrize(("their_ns", "theirs", "our_ns", "ours", "conflict"), OVERLAPS)
def test_hosts_overlap_table(their_ns: str, theirs: str, our_ns: str, ours: str, conflict: bool) -> None:
    assert overlaps(ours, our_ns, theirs, their_ns) is conflict
    assert overlaps(theirs, their_ns, ours, our_ns) is conflict  # symmetric


@settings(max_examples=300, deadline=None)
@given(a=hosts(), na=NAMESPACES, b=hosts(), nb=NAMESPACES)
def test_overlap_is_symmetric_and_reflexive(a: str, na: str, b: str, nb: str) -> None:
    assert overlaps(a, na, b, nb) == overlaps(b, nb, a, na)
    assert overlaps(a, na, a, na)


# --- the real edge: conflicts across namespaces -------------------------------------------------


def _vs(namespace: str, name: str, hosts: Sequence[str], **labels: str) -> dict[str, Any]:
    route = {"route": [{"destination": {"host": hosts[0].lstrip("*.") or "x"}}]}
    return {
        "apiVersion": f"{ISTIO}/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {"hosts": list(hosts), "http": [route]},
    }


@pytest.fixture(scope="module")
def server() -> Iterator[LocalApiServer]:
    with local_api_server() as fake:
        yield fake


@pytest.fixture
def edge(server: LocalApiServer) -> Iterator[KubeCluster]:
    cluster = KubeCluster(server.make_client(retries=retry_policy()), identity="test", propagation_delay=0)
    yield cluster
    with server.cond:  # a clean API server for the next case
        for key in [k for k in server.objects if k[0] in (ISTIO, "canarist.io", "", "telemetry.istio.io")]:
            del server.objects[key]


def _owner(edge: KubeCluster, body: Mapping[str, Any]) -> dict[str, Any]:
    return edge.create_or_update_rollout(body)


def _istio_writes(server: LocalApiServer, since: int) -> list[str]:
    return [f"{r.method} {r.path}" for r in server.writes[since:] if ISTIO in r.path]


@pytest.mark.parametrize(("their_ns", "theirs", "our_ns", "ours", "conflict"), OVERLAPS)
def test_the_edge_reports_a_conflict_iff_the_hosts_overlap(
    *, server: LocalApiServer, edge: KubeCluster, their_ns: str, theirs: str, our_ns: str, ours: str, conflict: bool
) -> None:
    before = server.seed(_vs(their_ns, "theirs", [theirs]))
    body = policy(our_ns, host=ours) if "*" not in ours else policy(our_ns, hosts=[ours])
    owner = _owner(edge, body)
    desired = render(ModelRollout.model_validate(body), RouteState(5), ENV)
    found = edge.route_conflicts(owner, desired)
    assert bool(found) is conflict, found
    start = len(server.writes)
    if conflict:
        assert {(c.namespace, c.name, c.other_host) for c in found} == {(their_ns, "theirs", theirs)}
        with pytest.raises(RouteConflictError) as refused:
            edge.apply_routes(owner, desired)
        assert refused.value.conflicts == tuple(found)
        assert _istio_writes(server, start) == []  # nothing written, not even the DestinationRule
    else:
        edge.apply_routes(owner, desired)
    after = server.get(ISTIO, "virtualservices", their_ns, "theirs")
    assert after is not None and after["spec"] == before["spec"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


PAYMENTS_FORMS = [
    "payments.prod.svc.cluster.local",
    "payments.prod.svc",
    "payments.prod",
    "*.prod.svc.cluster.local",
    "*.svc.cluster.local",
    "*.cluster.local",
]


@pytest.mark.parametrize("form", PAYMENTS_FORMS)
@pytest.mark.parametrize("theirs", ["payments", "payments.prod.svc.cluster.local"])
def test_a_payments_route_is_never_overwritten_by_a_rollout_of_team_a(
    server: LocalApiServer, edge: KubeCluster, form: str, theirs: str
) -> None:
    """Refused twice: by the tenancy rules, and, even where an administrator granted every host,
    by the edge's conflict check, which writes nothing at all."""
    payments = server.seed(_vs("prod", "payments", [theirs]))
    body = policy("team-a", hosts=[form])
    candidate = ModelRollout.model_validate(body)
    assert [p.dotted for p in check(candidate)] == ["spec.service.hosts[0]"]
    owner = _owner(edge, body)
    desired = render(candidate, RouteState(5), ENV)
    start = len(server.writes)
    found = edge.route_conflicts(owner, desired)
    assert [(c.host, c.namespace, c.name) for c in found] == [(form, "prod", "payments")]
    for _ in range(3):
        with pytest.raises(RouteConflictError):
            edge.apply_routes(owner, desired)
    assert _istio_writes(server, start) == []
    after = server.get(ISTIO, "virtualservices", "prod", "payments")
    assert after is not None and after["metadata"]["resourceVersion"] == payments["metadata"]["resourceVersion"]


def test_a_host_the_rollout_already_routes_is_not_frozen_by_a_later_object(
    server: LocalApiServer, edge: KubeCluster
) -> None:
    """Another team creating a VirtualService for our host later must not freeze our rollout (nor
    its rollback): the host was ours first."""
    body = policy("team-a")
    owner = _owner(edge, body)
    candidate = ModelRollout.model_validate(body)
    edge.apply_routes(owner, render(candidate, RouteState(5), ENV))
    server.seed(_vs("team-b", "squatter", ["fraud-detector.team-a.svc.cluster.local"]))
    assert edge.route_conflicts(owner, render(candidate, RouteState(0), ENV)) == []
    edge.apply_routes(owner, render(candidate, RouteState(0), ENV))  # the rollback goes through


def _cluster_wide_lists(server: LocalApiServer, since: int) -> list[str]:
    return [r.path for r in server.log[since:] if r.method == "GET" and r.path.endswith(f"/{ISTIO}/v1/virtualservices")]


def test_a_rollout_routing_only_its_own_hosts_does_not_list_every_virtualservice(
    server: LocalApiServer, edge: KubeCluster
) -> None:
    """Scale (issue 17): once a rollout's VirtualService routes every host it asks for, a reconcile
    has nothing to check against other namespaces; listing them all per reconcile made a pass
    O(N^2) in rollouts. A host it does not yet route is still checked against every namespace."""
    body = policy("team-a")
    owner = _owner(edge, body)
    candidate = ModelRollout.model_validate(body)
    start = len(server.log)
    edge.apply_routes(owner, render(candidate, RouteState(5), ENV))  # the first write: checked everywhere
    assert _cluster_wide_lists(server, start)
    start = len(server.log)
    assert edge.route_conflicts(owner, render(candidate, RouteState(25), ENV)) == []
    edge.apply_routes(owner, render(candidate, RouteState(25), ENV))
    assert _cluster_wide_lists(server, start) == []
    server.seed(_vs("edge", "public", ["api.example.com"]))
    widened = render(ModelRollout.model_validate(policy("team-a", hosts=["api.example.com"])), RouteState(25), ENV)
    start = len(server.log)
    found = edge.route_conflicts(owner, widened)
    assert [(c.host, c.namespace, c.name) for c in found] == [("api.example.com", "edge", "public")]
    assert _cluster_wide_lists(server, start)


def test_a_rollback_reaches_the_held_routes_without_a_newly_refused_host(
    server: LocalApiServer, edge: KubeCluster
) -> None:
    """A host added to the spec mid-rollout that another VirtualService routes is refused; the
    rollback still rewrites canarist's own routes, without that host (tenancy.without_hosts)."""
    body = policy("team-a")
    owner = _owner(edge, body)
    edge.apply_routes(owner, render(ModelRollout.model_validate(body), RouteState(25), ENV))
    theirs = server.seed(_vs("edge", "public", ["api.example.com"]))
    edited = policy("team-a", hosts=["api.example.com"])
    rollback = render(ModelRollout.model_validate(edited), RouteState(0), ENV)
    found = edge.route_conflicts(owner, rollback)
    assert [(c.host, c.namespace, c.name) for c in found] == [("api.example.com", "edge", "public")]
    kept = without_hosts(rollback, {c.host for c in found})
    assert edge.route_conflicts(owner, kept) == []
    assert edge.apply_routes(owner, kept).writes == (("VirtualService", "fraud-detector", "update"),)
    ours = server.get(ISTIO, "virtualservices", "team-a", "fraud-detector")
    assert ours is not None and ours["spec"]["hosts"] == ["fraud-detector.team-a.svc.cluster.local"]
    assert [d["weight"] for d in ours["spec"]["http"][-1]["route"]] == [100, 0]
    after = server.get(ISTIO, "virtualservices", "edge", "public")
    assert after is not None and after["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]


def test_another_rollouts_host_in_the_same_namespace_names_that_rollout(
    server: LocalApiServer, edge: KubeCluster
) -> None:
    first = _owner(edge, policy("team-a"))
    edge.apply_routes(first, render(rollout(), RouteState(5), ENV))
    second_body = policy("team-a")
    second_body["metadata"]["name"] = "intruder"
    second = _owner(edge, second_body)
    found = edge.route_conflicts(second, render(ModelRollout.model_validate(second_body), RouteState(5), ENV))
    assert found and all(c.managed_by == "team-a/fraud-detector" for c in found)


def test_objects_outside_the_rollouts_namespace_are_never_written(server: LocalApiServer, edge: KubeCluster) -> None:
    owner = _owner(edge, policy("team-a"))
    desired = render(rollout(namespace="payments"), RouteState(5), ENV)
    start = len(server.writes)
    with pytest.raises(Exception, match="not in the rollout's namespace"):
        edge.apply_routes(owner, desired)
    assert _istio_writes(server, start) == []


def _pod(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "model", "image": "triton"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


class NoData:
    """A metrics source with nothing to say (a refused rollout is never analysed anyway)."""

    def observe(
        self, rollouts: Sequence[ModelRollout], windows: Mapping[str, Sequence[Window]], at: float
    ) -> tuple[dict[str, Observation], EdgeFailure | None]:
        return {}, EdgeFailure("prometheus", "no data in this test", retryable=True)


# --- the reconciler: a refused rollout holds ----------------------------------------------------


@pytest.mark.parametrize("theirs", ["fraud-detector.team-a.svc.cluster.local", "*.team-a.svc.cluster.local", "*"])
def test_a_rollout_whose_routes_are_refused_holds_and_never_advances(theirs: str) -> None:
    cluster = MemoryCluster()
    cluster.routes[("VirtualService", "edge", "wildcard")] = _vs("edge", "wildcard", [theirs])
    cluster.add(policy("team-a"))
    for tick in range(40):
        (obj,), _ = cluster.list_rollouts(None)
        if tick == 10:  # a human asks to promote: still refused
            cluster.annotate_rollout("team-a", "fraud-detector", {"canarist.io/command": "promote"})
            (obj,), _ = cluster.list_rollouts(None)
        outcome = reconcile(obj, cluster, NoData(), ENV, now=1_800_000_000.0 + 30 * tick)
        assert outcome.action is Action.HOLD, outcome
    (obj,), _ = cluster.list_rollouts(None)
    assert obj["status"]["phase"] == "Initializing" and obj["status"]["canaryWeight"] == 0
    assert "routes refused" in obj["status"]["message"] and "edge/wildcard" in obj["status"]["message"]
    assert [k for k, _, _ in cluster.route_writes] == []
    refused = [reason for reason, _, warning in cluster.events if reason == "RoutesRefused" and warning]
    assert len(refused) == 1  # said once, not at every tick


def test_a_refused_rollout_holds_against_the_real_edge(server: LocalApiServer, edge: KubeCluster) -> None:
    """The reconciler asks the edge before it records anything: with every host granted, the
    payments route still wins, and the rollout stays before its first step, saying why."""
    server.seed(_vs("prod", "payments", ["payments"]))
    body = policy("team-a", hosts=["payments.prod.svc.cluster.local"])
    for i in range(2):
        server.seed(_pod(f"canary-{i}", "team-a", body["spec"]["canary"]["labels"]))
    _owner(edge, body)
    start = len(server.writes)
    for tick in range(6):
        current = edge.get_rollout("team-a", "fraud-detector")
        outcome = reconcile(current, edge, NoData(), ENV, now=1_800_000_000.0 + 60 * tick, rules=EVERYTHING)
        assert outcome.action is Action.HOLD, outcome
        assert "routes refused" in outcome.reason and "prod/payments" in outcome.reason
    assert _istio_writes(server, start) == []
    status = edge.get_rollout("team-a", "fraud-detector")["status"]
    assert status["phase"] == "Initializing" and status["canaryWeight"] == 0 and not status.get("history")
    assert "routes refused" in status["message"]
    # With the controller's default rules the host is refused before any route is considered.
    outcome = reconcile(edge.get_rollout("team-a", "fraud-detector"), edge, NoData(), ENV, now=1_800_001_000.0)
    assert outcome.action is Action.NONE and "spec.service.hosts[0]" in outcome.reason
    assert _istio_writes(server, start) == []


def test_an_abort_rolls_back_even_when_a_host_added_mid_rollout_is_refused() -> None:
    from controller.api.names import (
        COMMAND_ANNOTATION,
        COMMAND_AT_ANNOTATION,
        COMMAND_BY_ANNOTATION,
        COMMAND_ID_ANNOTATION,
    )
    from controller.api.times import rfc3339

    rules = rules_from_options(["team-a=api.example.com"])
    cluster = MemoryCluster()
    cluster.add(policy("team-a"))
    t0 = 1_800_000_000.0

    def tick(at: float) -> Any:
        (obj,), _ = cluster.list_rollouts(None)
        return reconcile(obj, cluster, NoData(), ENV, now=at, rules=rules)

    assert tick(t0).action is Action.START
    current = cluster.rollouts[("team-a", "fraud-detector")]
    current["spec"]["service"]["hosts"] = ["api.example.com"]  # granted, but another team routes it
    current["metadata"]["generation"] += 1
    cluster.routes[("VirtualService", "edge", "public")] = _vs("edge", "public", ["api.example.com"])
    held = tick(t0 + 30)
    assert held.action is Action.HOLD and "edge/public" in held.reason
    cluster.annotate_rollout(
        "team-a",
        "fraud-detector",
        {
            COMMAND_ANNOTATION: "abort",
            COMMAND_BY_ANNOTATION: "alice",
            COMMAND_ID_ANNOTATION: "1",
            COMMAND_AT_ANNOTATION: rfc3339(t0 + 59),
        },
    )
    assert tick(t0 + 60).action is Action.ROLLBACK
    kind, _, written = cluster.route_writes[-1]
    assert kind == "VirtualService" and written["spec"]["hosts"] == ["fraud-detector.team-a.svc.cluster.local"]
    primary = next(r for r in written["spec"]["http"] if r["name"] == "primary")
    assert [d["weight"] for d in primary["route"]] == [100, 0]
    assert cluster.routes[("VirtualService", "edge", "public")]["spec"]["hosts"] == ["api.example.com"]
    done = tick(t0 + 90)  # RollingBack -> Failed (0 % -> 0 %) is withdrawn too: it completes, never stuck
    assert (done.action, done.phase) == (Action.COMPLETE, Phase.FAILED), done


@pytest.mark.parametrize(
    ("their_gateways", "conflict"),
    [
        (None, True),  # bound to the mesh, as ours
        (["istio-system/ingress"], False),  # an ingress gateway's catch-all: no sidecar request meets it
        (["mesh", "istio-system/ingress"], True),
        (["ingress"], False),  # a short name: the gateway of its own namespace
    ],
)
def test_a_catch_all_bound_to_other_proxies_is_no_conflict(
    server: LocalApiServer, edge: KubeCluster, their_gateways: list[str] | None, conflict: bool
) -> None:
    theirs = _vs("istio-system", "catch-all", ["*"])
    if their_gateways is not None:
        theirs["spec"]["gateways"] = their_gateways
    server.seed(theirs)
    body = policy("team-a")
    owner = _owner(edge, body)
    objects = render(ModelRollout.model_validate(body), RouteState(5), ENV)
    found = edge.route_conflicts(owner, objects)
    assert bool(found) is conflict, found


def test_a_telemetry_of_someone_else_under_canarists_name_is_a_conflict_not_a_write(
    server: LocalApiServer, edge: KubeCluster
) -> None:
    body = policy("team-a")
    body["spec"]["routing"] = {"match": [{"name": "beta", "headers": {"x-beta": {"exact": "1"}}}]}
    server.seed(
        {
            "apiVersion": "telemetry.istio.io/v1",
            "kind": "Telemetry",
            "metadata": {"name": "fraud-detector-split", "namespace": "team-a"},
            "spec": {},
        }
    )
    owner = _owner(edge, body)
    objects = render(ModelRollout.model_validate(body), RouteState(5), ENV)
    (found,) = edge.route_conflicts(owner, objects)
    assert found.kind == "Telemetry" and found.name == "fraud-detector-split"


def test_a_cluster_role_without_telemetries_still_routes_a_rollout_without_cohorts(
    server: LocalApiServer, edge: KubeCluster
) -> None:
    """An upgrade keeps the previous ClusterRole for a while: listing Telemetries is refused (403)."""
    body = policy("team-a")
    owner = _owner(edge, body)
    server.fail("telemetries", 403, times=100)
    try:
        done = edge.apply_routes(owner, render(ModelRollout.model_validate(body), RouteState(5), ENV))
        assert [kind for kind, _, _ in done.writes] == ["DestinationRule", "VirtualService"]
        assert [kind for kind, _, _ in edge.release_routes(owner).writes] == ["VirtualService", "DestinationRule"]
    finally:
        with server.cond:
            server.faults.clear()
