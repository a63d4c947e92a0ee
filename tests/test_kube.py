"""The Kubernetes edge (controller.edges.kube) with the official client against the HTTP fake API server.

Every write the fake received is replayed to check make before break: at no moment does a
VirtualService route to a subset that no DestinationRule of its host defines.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from controller.api.model import ModelRollout
from controller.api.names import ADOPTED_LABEL, MANAGED_WEIGHTS_ANNOTATION, ORIGINAL_ANNOTATION
from controller.api.schedule import RouteState
from controller.edges.kube import KubeCluster, RejectedError, retry_policy
from controller.engine.ports import ClusterUnavailableError, Conflict, ConflictError, NotFoundError, RouteConflictError
from controller.sandbox.localapi import LocalApiServer, local_api_server
from controller.traffic.adopt import fqdn, merge_destination_rule, merge_virtual_service
from controller.traffic.render import render
from controller.traffic.templating import default_environment

ROOT = Path(__file__).resolve().parent.parent
POLICY = yaml.safe_load((ROOT / "policies/fraud-detector-istio.yaml").read_text())
ENV = default_environment()
NS, NAME = "ml-serving", "fraud-detector"
HOST = "fraud-detector.ml-serving.svc.cluster.local"
ISTIO = "networking.istio.io"


@pytest.fixture
def server() -> Iterator[LocalApiServer]:
    with local_api_server() as fake:
        yield fake


@pytest.fixture
def cluster(server: LocalApiServer) -> KubeCluster:
    return KubeCluster(edge_client(server), identity="test", propagation_delay=0)


def edge_client(server: LocalApiServer) -> Any:
    """An ApiClient configured as KubeCluster.from_settings configures its own."""
    return server.make_client(retries=retry_policy())


@pytest.fixture
def owner(cluster: KubeCluster) -> dict[str, Any]:
    body = {k: v for k, v in POLICY.items() if k != "status"}
    return cluster.create_or_update_rollout(body)


def routes(weight: int, policy: dict[str, Any] = POLICY) -> list[dict[str, Any]]:
    return render(ModelRollout.model_validate(policy), RouteState(weight), ENV)


def route_writes(server: LocalApiServer) -> list[tuple[str, str]]:
    """(method, plural/name) of every successful write to an Istio object."""
    out = []
    for request in server.writes:
        if ISTIO in request.path and request.code < 300:
            out.append((request.method, "/".join(request.path.split("/")[6:])))
    return out


def check_make_before_break(server: LocalApiServer) -> None:
    """Replay the successful Istio writes: after each one, every routed subset is defined."""
    state: dict[str, dict[str, Any]] = {}
    for request in server.writes:
        if ISTIO not in request.path or request.code >= 300:
            continue
        parts = request.path.split("/")
        plural = parts[6]
        key = f"{plural}/{parts[7]}" if len(parts) > 7 else None
        if request.method == "POST":
            key = f"{plural}/{request.body['metadata']['name']}"
            state[key] = request.body
        elif request.method == "PUT":
            state[str(key)] = request.body
        elif request.method == "DELETE":
            state.pop(str(key), None)
        defined: dict[str, set[str]] = {}
        for name, obj in state.items():
            if name.startswith("destinationrules/"):
                host = fqdn(obj["spec"]["host"], NS)
                defined.setdefault(host, set()).update(s["name"] for s in obj["spec"].get("subsets") or [])
        for name, obj in state.items():
            if not name.startswith("virtualservices/"):
                continue
            for route in obj["spec"].get("http") or []:
                for target in [d["destination"] for d in route.get("route") or []] + [route.get("mirror") or {}]:
                    subset = target.get("subset")
                    if subset is not None:
                        host = fqdn(target["host"], NS)
                        assert subset in defined.get(host, set()), (
                            f"{request.method} {request.path}: {subset} undefined"
                        )


def stored(server: LocalApiServer, plural: str, name: str) -> dict[str, Any]:
    found = server.get(ISTIO, plural, NS, name)
    assert found is not None, f"{plural}/{name} missing"
    return found


# --- apply_routes: created objects ------------------------------------------------------------


def test_first_apply_creates_the_destination_rule_then_the_virtual_service(server, cluster, owner) -> None:
    desired = routes(1)
    result = cluster.apply_routes(owner, desired)
    assert result.writes == (("DestinationRule", NAME, "create"), ("VirtualService", NAME, "create"))
    assert route_writes(server) == [("POST", "destinationrules"), ("POST", "virtualservices")]
    reference = {
        "apiVersion": "canarist.io/v1alpha1",
        "kind": "ModelRollout",
        "name": NAME,
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": False,
    }
    for plural, rendered in zip(("destinationrules", "virtualservices"), desired, strict=True):
        obj = stored(server, plural, NAME)
        assert obj["spec"] == rendered["spec"]
        assert obj["metadata"]["ownerReferences"] == [reference]
        assert obj["metadata"]["annotations"][MANAGED_WEIGHTS_ANNOTATION] == "true"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "canarist"
        assert obj["metadata"]["labels"]["canarist.io/rollout"] == NAME
    check_make_before_break(server)


def test_an_identical_apply_writes_nothing(server, cluster, owner) -> None:
    cluster.apply_routes(owner, routes(5))
    before = len(server.writes)
    assert cluster.apply_routes(owner, routes(5)).writes == ()
    assert len(server.writes) == before


def test_a_weight_change_rewrites_only_the_virtual_service(server, cluster, owner) -> None:
    cluster.apply_routes(owner, routes(1))
    before = len(server.writes)
    result = cluster.apply_routes(owner, routes(25))
    assert result.writes == (("VirtualService", NAME, "update"),)
    assert [r.method for r in server.writes[before:]] == ["PUT"]
    weights = [d["weight"] for d in stored(server, "virtualservices", NAME)["spec"]["http"][-1]["route"]]
    assert weights == [75, 25]
    check_make_before_break(server)


def test_someone_elses_labels_and_annotations_survive_an_update(server, cluster, owner) -> None:
    cluster.apply_routes(owner, routes(1))
    api = client.CustomObjectsApi(server.api_client)
    patch = {"metadata": {"labels": {"owner-team": "x"}, "annotations": {"note": "kept"}}}
    api.patch_namespaced_custom_object(ISTIO, "v1", NS, "virtualservices", NAME, patch)
    cluster.apply_routes(owner, routes(5))
    obj = stored(server, "virtualservices", NAME)
    assert obj["metadata"]["labels"]["owner-team"] == "x" and obj["metadata"]["annotations"]["note"] == "kept"


def test_a_changed_canary_keeps_the_old_subset_until_no_route_uses_it(server, cluster, owner) -> None:
    cluster.apply_routes(owner, routes(25))
    policy = copy.deepcopy(POLICY)
    policy["spec"]["canary"] = {"name": "v43", "labels": {"app": NAME, "version": "v43"}}
    result = cluster.apply_routes(owner, routes(1, policy))
    assert result.writes == (
        ("DestinationRule", NAME, "update"),
        ("VirtualService", NAME, "update"),
        ("DestinationRule", NAME, "update"),
    )
    assert [s["name"] for s in stored(server, "destinationrules", NAME)["spec"]["subsets"]] == ["v41", "v43"]
    check_make_before_break(server)


def test_a_conflict_storm_is_retried_with_fresh_reads(server, cluster, owner) -> None:
    cluster.apply_routes(owner, routes(1))
    server.fail(f"/virtualservices/{NAME}", 409, times=3, method="PUT")
    result = cluster.apply_routes(owner, routes(5))
    assert result.writes == (("VirtualService", NAME, "update"),)
    puts = [r.code for r in server.writes if r.method == "PUT"]
    assert puts == [409, 409, 409, 200]
    weights = [d["weight"] for d in stored(server, "virtualservices", NAME)["spec"]["http"][-1]["route"]]
    assert weights == [95, 5]


def test_one_apply_checks_and_writes_on_one_read_of_each_object(server, cluster, owner) -> None:
    """The conflict check and the write share their reads (issue 17: GETs are most of a pass's requests);
    a GET after the apply is a fresh one."""
    cluster.apply_routes(owner, routes(1))
    before = len(server.log)
    cluster.apply_routes(owner, routes(5))
    gets = sorted(r.path.rsplit("/", 2)[-2] for r in server.log[before:] if r.method == "GET")
    assert gets.count("virtualservices") == 1 and gets.count("destinationrules") == 1, gets
    before = len(server.log)
    cluster.apply_routes(owner, routes(5))  # nothing to change: read again, not remembered from the last apply
    again = [r.path.rsplit("/", 2)[-2] for r in server.log[before:] if r.method == "GET"]
    assert sorted(p for p in again if p in ("virtualservices", "destinationrules")) == [
        "destinationrules",
        "virtualservices",
    ]


def test_a_real_concurrent_writer_is_retried(server, cluster, owner) -> None:
    """Another writer bumps the resourceVersion between canarist's read and its write."""
    cluster.apply_routes(owner, routes(1))
    api = client.CustomObjectsApi(server.api_client)
    original = cluster._replace

    def racing_replace(kind: Any, body: Any, **kwargs: Any) -> dict[str, Any]:
        if kind.plural == "virtualservices" and not getattr(racing_replace, "done", False):
            racing_replace.done = True  # type: ignore[attr-defined]
            api.patch_namespaced_custom_object(
                ISTIO, "v1", NS, "virtualservices", NAME, {"metadata": {"labels": {"x": "y"}}}
            )
        return original(kind, body, **kwargs)

    cluster._replace = racing_replace  # type: ignore[method-assign]
    cluster.apply_routes(owner, routes(5))
    assert [r.code for r in server.writes if r.method == "PUT"] == [409, 200]
    assert stored(server, "virtualservices", NAME)["metadata"]["labels"]["x"] == "y"


def test_endless_conflicts_end_in_conflict_error(server, cluster, owner) -> None:
    cluster.apply_routes(owner, routes(1))
    server.fail(f"/virtualservices/{NAME}", 409, times=10, method="PUT")
    with pytest.raises(ConflictError):
        cluster.apply_routes(owner, routes(5))
    assert len([r for r in server.writes if r.method == "PUT"]) == cluster.conflict_retries


def test_server_errors_and_refusals_are_temporary_errors(server, cluster, owner) -> None:
    server.fail("/destinationrules", 500)
    with pytest.raises(ClusterUnavailableError):
        cluster.apply_routes(owner, routes(1))
    server.fail("/destinationrules", 503, retry_after=7)
    with pytest.raises(ClusterUnavailableError) as caught:
        cluster.apply_routes(owner, routes(1))
    assert caught.value.retry_after == 7
    server.fail("/destinationrules", 403)
    with pytest.raises(RejectedError) as refused:
        cluster.apply_routes(owner, routes(1))
    assert refused.value.code == 403 and refused.value.retry_after >= 30
    assert cluster.apply_routes(owner, routes(1)).changed


def test_an_unreachable_server_is_a_temporary_error() -> None:
    with local_api_server() as fake:
        url = fake.url  # stopped on leaving: nothing listens there any more
    configuration = client.Configuration()
    configuration.host = url
    configuration.retries = retry_policy()
    cluster = KubeCluster(client.ApiClient(configuration), request_timeout=2)
    with pytest.raises(ClusterUnavailableError):
        cluster.list_rollouts(None)


def test_a_slow_server_times_out_as_a_temporary_error(server) -> None:
    cluster = KubeCluster(edge_client(server), request_timeout=0.3)
    server.fail("/modelrollouts", None, delay=1.0)
    started = time.monotonic()
    with pytest.raises(ClusterUnavailableError):
        cluster.list_rollouts(NS)
    assert time.monotonic() - started < 1.0


def test_waits_for_istio_before_routing_to_a_new_subset(server, owner) -> None:
    """istiod reports no status here: the whole propagation delay, between the subsets and the routes."""
    now = [0.0]
    slept: list[list[tuple[str, str]]] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds
        slept.append(route_writes(server))

    cluster = KubeCluster(edge_client(server), propagation_delay=0.5, sleep=sleep, clock=lambda: now[0])
    cluster.apply_routes(owner, routes(1))
    assert now[0] == pytest.approx(0.5)
    assert slept and all(writes == [("POST", "destinationrules")] for writes in slept)
    slept.clear()
    cluster.apply_routes(owner, routes(5))
    assert slept == []  # no new subset: no wait


def test_istio_status_reporting_ends_the_wait_early() -> None:
    with local_api_server(istio_status=True) as fake:
        slept: list[float] = []
        cluster = KubeCluster(edge_client(fake), propagation_delay=5.0, sleep=slept.append)
        owner = cluster.create_or_update_rollout({k: v for k, v in POLICY.items() if k != "status"})
        cluster.apply_routes(owner, routes(1))
        assert slept == []
        assert fake.get(ISTIO, "virtualservices", NS, NAME) is not None


def test_a_name_taken_by_a_foreign_object_for_another_host_is_refused(server, cluster, owner) -> None:
    server.seed(_dr(NAME, "other-service", []))
    with pytest.raises(RouteConflictError) as refused:
        cluster.apply_routes(owner, routes(1))
    assert refused.value.conflicts == (Conflict(HOST, "DestinationRule", NS, NAME, "other-service", None),)
    assert [w for w in route_writes(server) if w[0] != "GET"] == []


# --- adoption ---------------------------------------------------------------------------------


def _dr(name: str, host: str, subsets: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{ISTIO}/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": NS, "labels": {"owner": "team"}, "annotations": {"a": "b"}},
        "spec": {"host": host, "subsets": subsets, **spec},
    }


def _vs(name: str, hosts: list[str], http: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{ISTIO}/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": NS, "labels": {"owner": "team"}},
        "spec": {"hosts": hosts, "gateways": ["mesh", "edge/gw"], "http": http},
    }


USER_DR = _dr(
    "fraud-dr",
    "fraud-detector",
    [{"name": "v41", "labels": {"version": "v41"}}, {"name": "legacy", "labels": {"version": "v30"}}],
    trafficPolicy={"tls": {"mode": "ISTIO_MUTUAL"}},
)
ADMIN = {"name": "admin", "match": [{"uri": {"prefix": "/admin"}}], "route": [{"destination": {"host": "admin"}}]}
DEFAULT = {
    "name": "default",
    "match": [{"uri": {"prefix": "/v1"}}],
    "rewrite": {"uri": "/"},
    "timeout": "9s",
    "route": [{"destination": {"host": "fraud-detector", "subset": "v41"}}],
}
USER_VS = _vs("fraud-routes", ["fraud-detector", "fraud.example.com"], [ADMIN, DEFAULT])


def test_adopts_the_users_objects_for_the_host_and_restores_them_exactly(server, cluster, owner) -> None:
    dr, vs = server.seed(USER_DR), server.seed(USER_VS)
    result = cluster.apply_routes(owner, routes(5))
    assert result.writes == (("DestinationRule", "fraud-dr", "adopt"), ("VirtualService", "fraud-routes", "adopt"))
    assert server.get(ISTIO, "destinationrules", NS, NAME) is None
    assert server.get(ISTIO, "virtualservices", NS, NAME) is None

    adopted_dr = stored(server, "destinationrules", "fraud-dr")
    assert json.loads(adopted_dr["metadata"]["annotations"][ORIGINAL_ANNOTATION]) == USER_DR["spec"]
    assert adopted_dr["metadata"]["labels"][ADOPTED_LABEL] == NAME
    assert "ownerReferences" not in adopted_dr["metadata"]
    spec = adopted_dr["spec"]
    assert spec["host"] == "fraud-detector" and spec["trafficPolicy"] == {"tls": {"mode": "ISTIO_MUTUAL"}}
    assert [s["name"] for s in spec["subsets"]] == ["legacy", "v41", "v42"]
    assert spec["subsets"][1]["trafficPolicy"]["loadBalancer"] == {"simple": "LEAST_REQUEST"}

    http = stored(server, "virtualservices", "fraud-routes")["spec"]["http"]
    assert http[0] == ADMIN
    taken = http[-1]
    assert taken["name"] == "default" and taken["match"] == DEFAULT["match"] and taken["rewrite"] == {"uri": "/"}
    assert [(d["destination"]["subset"], d["weight"]) for d in taken["route"]] == [("v41", 95), ("v42", 5)]
    assert taken["timeout"] == "2s"  # the policy's
    check_make_before_break(server)

    assert cluster.apply_routes(owner, routes(5)).writes == ()
    assert cluster.apply_routes(owner, routes(25)).writes == (("VirtualService", "fraud-routes", "update"),)

    released = cluster.release_routes(owner)
    assert released.writes == (
        ("VirtualService", "fraud-routes", "restore"),
        ("DestinationRule", "fraud-dr", "restore"),
    )
    for before, plural in ((dr, "destinationrules"), (vs, "virtualservices")):
        after = stored(server, plural, before["metadata"]["name"])
        assert after["spec"] == before["spec"]
        assert after["metadata"].get("labels") == before["metadata"].get("labels")
        assert after["metadata"].get("annotations") == before["metadata"].get("annotations")
    check_make_before_break(server)


def test_cohort_routes_are_restricted_to_the_users_match() -> None:
    policy = copy.deepcopy(POLICY)
    policy["spec"]["routing"]["match"] = [{"name": "beta", "headers": {"x-beta": {"exact": "1"}}}]
    ours = routes(5, policy)[-1]["spec"]
    merged = merge_virtual_service(USER_VS["spec"], ours, HOST, NS)
    assert [r.get("name") for r in merged["http"]] == ["admin", "cohort-beta", "default"]
    cohort = merged["http"][1]
    assert cohort["match"] == [{"uri": {"prefix": "/v1"}, "headers": {"x-beta": {"exact": "1"}}}]
    assert cohort["rewrite"] == {"uri": "/"}  # the user's route settings carry over
    assert cohort["route"][0]["destination"]["subset"] == "v42"


def test_a_virtual_service_without_a_route_to_the_host_gets_canarists_routes_appended() -> None:
    ours = routes(5)[1]["spec"]
    merged = merge_virtual_service({"hosts": [HOST], "http": [ADMIN]}, ours, HOST, NS)
    assert merged["http"][0] == ADMIN and merged["http"][1:] == ours["http"]


def test_merge_destination_rule_without_subsets() -> None:
    ours = routes(5)[0]["spec"]
    merged = merge_destination_rule({"host": "fraud-detector"}, ours)
    assert [s["name"] for s in merged["subsets"]] == ["v41", "v42"] and "trafficPolicy" not in merged


def test_release_deletes_what_canarist_created_and_restores_what_it_adopted(server, cluster, owner) -> None:
    dr = server.seed(USER_DR)
    cluster.apply_routes(owner, routes(50))
    assert stored(server, "virtualservices", NAME)["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    result = cluster.release_routes(owner)
    assert result.writes == (("VirtualService", NAME, "delete"), ("DestinationRule", "fraud-dr", "restore"))
    assert server.get(ISTIO, "virtualservices", NS, NAME) is None
    assert stored(server, "destinationrules", "fraud-dr")["spec"] == dr["spec"]
    check_make_before_break(server)
    assert cluster.release_routes(owner).writes == ()


def test_deleting_the_rollout_collects_created_objects_but_never_adopted_ones(server, cluster, owner) -> None:
    server.seed(USER_DR)
    cluster.apply_routes(owner, routes(50))
    client.CustomObjectsApi(server.api_client).delete_namespaced_custom_object(
        "canarist.io", "v1alpha1", NS, "modelrollouts", NAME
    )
    assert server.get(ISTIO, "virtualservices", NS, NAME) is None
    assert server.get(ISTIO, "destinationrules", NS, "fraud-dr") is not None


def test_another_rollout_on_the_same_host_is_refused(server, cluster, owner) -> None:
    cluster.apply_routes(owner, routes(5))
    other = copy.deepcopy(owner)
    other["metadata"]["name"] = "intruder"
    desired = routes(5)
    for obj in desired:
        obj["metadata"]["name"] = "intruder"
    with pytest.raises(RouteConflictError, match=f"managed by rollout {NS}/{NAME}"):
        cluster.apply_routes(other, desired)


# --- rollouts ---------------------------------------------------------------------------------


def test_create_or_update_writes_only_changes_and_keeps_other_annotations(server, cluster, owner) -> None:
    cluster.annotate_rollout(NS, NAME, {"canarist.io/command": "pause"})
    before = len(server.writes)
    body = {k: v for k, v in POLICY.items() if k != "status"}
    same = cluster.create_or_update_rollout(body)
    assert len(server.writes) == before and same["metadata"]["generation"] == 1
    changed = copy.deepcopy(body)
    changed["spec"]["strategy"]["interval"] = "2m"
    updated = cluster.create_or_update_rollout(changed)
    assert updated["metadata"]["generation"] == 2
    assert updated["metadata"]["annotations"]["canarist.io/command"] == "pause"


def test_status_write_with_a_stale_resource_version_is_a_conflict(server, cluster, owner) -> None:
    stale = owner["metadata"]["resourceVersion"]
    written = cluster.patch_rollout_status(NS, NAME, {"phase": "Progressing", "step": 1}, stale)
    assert written["status"] == {"phase": "Progressing", "step": 1}
    with pytest.raises(ConflictError):
        cluster.patch_rollout_status(NS, NAME, {"phase": "Failed"}, stale)
    fresh = written["metadata"]["resourceVersion"]
    again = cluster.patch_rollout_status(NS, NAME, {"phase": "Succeeded"}, fresh)
    assert again["status"] == {"phase": "Succeeded"}  # a replace: keys left out are gone
    assert again["metadata"]["generation"] == owner["metadata"]["generation"]
    assert cluster.patch_rollout_status(NS, NAME, {"phase": "Paused"}, "")["status"] == {"phase": "Paused"}


def test_annotate_and_get(cluster, owner) -> None:
    cluster.annotate_rollout(NS, NAME, {"canarist.io/command": "promote", "canarist.io/command-by": "ana"})
    got = cluster.get_rollout(NS, NAME)
    assert got["metadata"]["annotations"]["canarist.io/command"] == "promote"
    cluster.annotate_rollout(NS, NAME, {"canarist.io/command": None})
    assert "canarist.io/command" not in cluster.get_rollout(NS, NAME)["metadata"]["annotations"]
    with pytest.raises(NotFoundError):
        cluster.get_rollout(NS, "nope")
    with pytest.raises(NotFoundError):
        cluster.annotate_rollout(NS, "nope", {"a": "b"})


def test_list_and_watch(server, cluster, owner) -> None:
    other = copy.deepcopy({k: v for k, v in POLICY.items() if k != "status"})
    other["metadata"] = {"name": "other", "namespace": "team-b"}
    cluster.create_or_update_rollout(other)
    everything, version = cluster.list_rollouts(None)
    assert sorted(o["metadata"]["name"] for o in everything) == ["fraud-detector", "other"]
    assert [o["metadata"]["name"] for o in cluster.list_rollouts(NS)[0]] == [NAME]
    cluster.annotate_rollout(NS, NAME, {"x": "1"})
    client.CustomObjectsApi(server.api_client).delete_namespaced_custom_object(
        "canarist.io", "v1alpha1", "team-b", "modelrollouts", "other"
    )
    started = time.monotonic()
    events = [(e.type, e.object["metadata"]["name"]) for e in cluster.watch_rollouts(None, version, 1)]
    assert events == [("MODIFIED", NAME), ("DELETED", "other")]
    assert [e.type for e in cluster.watch_rollouts(NS, version, 1)] == ["MODIFIED"]
    assert time.monotonic() - started < 4


def test_a_watch_from_a_compacted_version_is_a_temporary_error(server, cluster, owner) -> None:
    _, version = cluster.list_rollouts(None)
    cluster.annotate_rollout(NS, NAME, {"x": "1"})
    server.compact()
    with pytest.raises(ClusterUnavailableError, match="list again"):
        list(cluster.watch_rollouts(None, version, 1))


# --- events and pods --------------------------------------------------------------------------


def test_emit_event_records_an_event_on_the_rollout(server, cluster, owner) -> None:
    cluster.emit_event(owner, reason="Advance", message="step 2: 5%", warning=False)
    cluster.emit_event(owner, reason="Rollback", message="p99 over budget", warning=True)
    events = [o for k, o in server.objects.items() if k[:2] == ("events.k8s.io", "events")]
    assert sorted((e["reason"], e["type"]) for e in events) == [("Advance", "Normal"), ("Rollback", "Warning")]
    assert all(e["regarding"]["uid"] == owner["metadata"]["uid"] for e in events)
    assert all(e["reportingController"] == "canarist.io/controller" for e in events)


def test_emit_event_never_raises(server, cluster, owner) -> None:
    server.fail("/events", 500, times=5)
    cluster.emit_event(owner, reason="Advance", message="x")
    server.fail("/events", None, delay=0.5)
    quick = KubeCluster(edge_client(server), request_timeout=0.1)
    quick.emit_event({}, reason="Hold", message="no owner at all")


def test_emit_event_falls_back_to_core_events(server, cluster, owner) -> None:
    server.fail("/apis/events.k8s.io", 404)
    cluster.emit_event(owner, reason="Promote", message="done")
    events = [o for k, o in server.objects.items() if k[:2] == ("", "events")]
    assert [(e["reason"], e["involvedObject"]["name"]) for e in events] == [("Promote", NAME)]


def _pod(name: str, labels: dict[str, str], ready: bool, **extra: Any) -> dict[str, Any]:
    metadata = {"name": name, "namespace": NS, "labels": labels, **extra.pop("metadata", {})}
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "model", "image": "triton"}]},
        "status": {"phase": extra.get("phase", "Running"), "conditions": conditions},
    }


def test_pods_ready_counts_ready_pods_matching_the_labels(server, cluster) -> None:
    canary = {"app": NAME, "version": "v42"}
    server.seed(_pod("a", canary, True))
    server.seed(_pod("b", canary, True))
    server.seed(_pod("c", canary, False))
    server.seed(_pod("d", {"app": NAME, "version": "v41"}, True))
    server.seed(_pod("e", canary, True, phase="Succeeded"))
    server.seed(_pod("f", canary, True, metadata={"deletionTimestamp": "2024-01-01T00:00:00Z"}))
    assert cluster.pods_ready(NS, canary) == (2, 3)
    assert cluster.pods_ready(NS, {"app": "none"}) == (0, 0)


# --- settings ---------------------------------------------------------------------------------


def test_from_settings_reads_a_kubeconfig(server, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "here", "context": {"cluster": "fake", "user": "me", "namespace": NS}}],
        "current-context": "here",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    cluster = KubeCluster.from_settings(kubeconfig=str(path), context="here")
    assert cluster.list_rollouts(None) == ([], "0")


def test_an_event_message_is_stored_printable_and_bounded(server: LocalApiServer, cluster: KubeCluster, owner) -> None:
    """Event messages carry user and server text (reasons, who asked): no escape reaches kubectl."""
    cluster.emit_event(owner, reason="Pause", message="paused by \x1b[2J\x1b]0;owned\x07\u202eeve\n" + "x" * 5000)
    (event,) = [
        o for (group, plural, _, _), o in server.objects.items() if (group, plural) == ("events.k8s.io", "events")
    ]
    note = str(event["note"])
    assert note.startswith("paused by ") and len(note) <= 1024
    assert not any(ch in note for ch in "\x1b\x07\n\u202e"), repr(note[:60])
