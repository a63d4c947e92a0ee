"""The fake API server keeps the API server's semantics: proved with the official client over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client, watch
from kubernetes.client import ApiException

from controller.sandbox.localapi import ApiError, LocalApiServer, local_api_server
from controller.sandbox.localapi.documents import json_patch, label_matcher, merge_patch
from controller.sandbox.localapi.store import Objects

GROUP, VERSION, PLURAL, NS = "canarist.io", "v1alpha1", "modelrollouts", "default"


@pytest.fixture
def server() -> Iterator[LocalApiServer]:
    with local_api_server() as fake:
        yield fake


@pytest.fixture
def api(server: LocalApiServer) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(server.api_client)


def rollout(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    metadata = {"name": name, "labels": labels or {}, **extra.pop("metadata", {})}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelRollout", "metadata": metadata, "spec": {"v": 1}, **extra}


def create(api: client.CustomObjectsApi, body: dict[str, Any], ns: str = NS) -> dict[str, Any]:
    return api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)  # type: ignore[no-any-return]


def error(caught: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(caught.value.body)
    assert status["kind"] == "Status" and status["status"] == "Failure" and status["code"] == caught.value.status
    return status


# --- objects ----------------------------------------------------------------------------------


def test_create_sets_server_fields_and_refuses_a_duplicate(api) -> None:
    made = create(api, rollout("a", status={"phase": "Done"}))
    metadata = made["metadata"]
    assert metadata["uid"] and metadata["creationTimestamp"].endswith("Z")
    assert metadata["generation"] == 1 and metadata["resourceVersion"] == "1" and metadata["namespace"] == NS
    assert "status" not in made  # the status subresource: create cannot set status
    with pytest.raises(ApiException) as caught:
        create(api, rollout("a"))
    assert caught.value.status == 409 and error(caught)["reason"] == "AlreadyExists"
    generated = create(
        api, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelRollout", "metadata": {"generateName": "x-"}}
    )
    assert generated["metadata"]["name"].startswith("x-")


def test_creation_timestamp_is_never_before_the_moment_the_create_was_sent(api) -> None:
    """Just after a second boundary, what a client read from ``time.time()`` before it sent the create
    is not later than the stored creationTimestamp (a coarse clock once put it a second behind, and a
    command issued just before a restore looked issued after the object's creation)."""
    for attempt in range(5):
        time.sleep(1.0 - time.time() % 1)  # right after a second boundary, where a coarse clock lags
        sent = time.time()
        made = create(api, rollout(f"at-{attempt}"))
        created = dt.datetime.fromisoformat(made["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        assert created.timestamp() >= int(sent), (made["metadata"]["creationTimestamp"], sent)


def test_get_of_a_missing_object_is_a_not_found_status(api) -> None:
    with pytest.raises(ApiException) as caught:
        api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "missing")
    status = error(caught)
    assert (caught.value.status, status["reason"]) == (404, "NotFound")
    assert status["details"] == {"name": "missing", "group": GROUP, "kind": PLURAL}
    with pytest.raises(ApiException) as unknown:
        api.list_namespaced_custom_object("nope.io", "v1", NS, "things")
    assert unknown.value.status == 404


def test_replace_needs_the_current_resource_version(api) -> None:
    made = create(api, rollout("a"))
    made["spec"] = {"v": 2}
    updated = api.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", made)
    assert int(updated["metadata"]["resourceVersion"]) > int(made["metadata"]["resourceVersion"])
    with pytest.raises(ApiException) as stale:
        api.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", made)  # the old version
    assert stale.value.status == 409 and error(stale)["reason"] == "Conflict"
    del updated["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as unconditional:
        api.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", updated)
    assert unconditional.value.status == 422  # custom resources need a resourceVersion to update


def test_generation_follows_the_spec_only_and_a_no_op_write_changes_nothing(api) -> None:
    made = create(api, rollout("a"))
    labelled = api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", {"metadata": {"labels": {"x": "1"}}})
    assert labelled["metadata"]["generation"] == 1
    respec = api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", {"spec": {"v": 2}})
    assert respec["metadata"]["generation"] == 2
    status = {**respec, "status": {"phase": "Progressing"}}
    with_status = api.replace_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", status)
    assert with_status["metadata"]["generation"] == 2
    same = api.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", with_status)
    assert same["metadata"]["resourceVersion"] == with_status["metadata"]["resourceVersion"]
    assert made["metadata"]["uid"] == same["metadata"]["uid"]


def test_a_no_op_write_of_an_object_holding_a_nan_changes_nothing(server: LocalApiServer) -> None:
    """A NaN equals nothing, itself included: the stored copies must still compare as the same document."""
    server.seed({**rollout("a"), "status": {"metrics": [{"eValue": float("nan")}]}})
    before = server.resource_version
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}/a"
    for sub in ("", "/status"):
        code, _ = server.handle("PATCH", path + sub, {}, {}, "application/merge-patch+json")
        assert code == 200
    assert server.resource_version == before


def test_the_status_subresource_is_isolated(api) -> None:
    made = create(api, rollout("a"))
    both = {**made, "spec": {"v": 9}, "status": {"phase": "Progressing"}}
    via_status = api.replace_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", both)
    assert via_status["status"] == {"phase": "Progressing"} and via_status["spec"] == {"v": 1}
    both = {**via_status, "spec": {"v": 2}, "status": {"phase": "Hacked"}}
    via_main = api.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", both)
    assert via_main["status"] == {"phase": "Progressing"} and via_main["spec"] == {"v": 2}
    patched = api.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", {"status": {"step": 3}})
    assert patched["status"] == {"phase": "Progressing", "step": 3}
    stale = {"metadata": {"resourceVersion": made["metadata"]["resourceVersion"]}, "status": {"step": 4}}
    with pytest.raises(ApiException) as caught:
        api.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", stale)
    assert caught.value.status == 409


def test_merge_and_json_patches(server, api) -> None:
    create(api, rollout("a", metadata={"annotations": {"keep": "1", "drop": "2"}}))
    merged = api.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "a", {"metadata": {"annotations": {"drop": None}}}
    )
    assert merged["metadata"]["annotations"] == {"keep": "1"}
    ops = [{"op": "add", "path": "/spec/list", "value": [1]}, {"op": "add", "path": "/spec/list/-", "value": 2}]
    patched = api.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "a", ops, _content_type="application/json-patch+json"
    )
    assert patched["spec"] == {"v": 1, "list": [1, 2]}
    failing = [{"op": "test", "path": "/spec/v", "value": 7}, {"op": "remove", "path": "/spec/v"}]
    with pytest.raises(ApiException) as caught:
        api.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, "a", failing, _content_type="application/json-patch+json"
        )
    assert caught.value.status == 422
    assert [r.method for r in server.writes] == ["POST", "PATCH", "PATCH", "PATCH"]


def test_pods_and_strategic_merge_patch(server) -> None:
    core = client.CoreV1Api(server.api_client)
    for name, version in (("a", "v1"), ("b", "v2"), ("c", "v2")):
        labels = {"app": "m", "version": version}
        server.seed(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": labels},
                "spec": {"containers": []},
            }
        )
    assert [p.metadata.name for p in core.list_namespaced_pod(NS, label_selector="app=m,version=v2").items] == [
        "b",
        "c",
    ]
    core.patch_namespaced_pod("c", NS, {"metadata": {"labels": {"version": "v3"}}})
    assert [p.metadata.name for p in core.list_namespaced_pod(NS, label_selector="version!=v1").items] == ["b", "c"]
    assert [p.metadata.name for p in core.list_namespaced_pod(NS, label_selector="version in (v1,v3)").items] == [
        "a",
        "c",
    ]
    assert len(core.list_pod_for_all_namespaces(label_selector="app").items) == 3
    assert core.list_namespaced_pod(NS, label_selector="!app").items == []
    assert [p.metadata.name for p in core.list_namespaced_pod(NS, field_selector="metadata.name=b").items] == ["b"]


def test_pods_are_listed_by_node_as_a_node_agent_asks_and_other_resources_refuse_that_field(api) -> None:
    core = client.CoreV1Api(api.api_client)
    for name, node in (("a", "gpu-1"), ("b", "gpu-2"), ("c", "gpu-1")):
        core.create_namespaced_pod(
            NS,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {"containers": [], "nodeName": node},
            },
        )
    on_node = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=gpu-1").items
    assert [p.metadata.name for p in on_node] == ["a", "c"]
    assert [
        p.metadata.name
        for p in core.list_namespaced_pod(NS, field_selector="spec.nodeName=gpu-1,metadata.name=c").items
    ] == ["c"]
    with pytest.raises(ApiException) as refused:
        client.CoordinationV1Api(api.api_client).list_namespaced_lease(NS, field_selector="spec.nodeName=gpu-1")
    assert refused.value.status == 400 and "field label not supported" in str(refused.value.body)


def test_list_has_the_current_resource_version_and_filters(api) -> None:
    create(api, rollout("a", {"team": "x"}))
    create(api, rollout("b", {"team": "y"}))
    create(api, rollout("c", {"team": "x"}), ns="other")
    listing = api.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector="team=x")
    assert [i["metadata"]["name"] for i in listing["items"]] == ["a", "c"]
    assert listing["metadata"]["resourceVersion"] == "3" and listing["kind"] == "ModelRolloutList"
    assert len(api.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]) == 2
    assert (
        api.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, label_selector="team notin (x,y)")["items"] == []
    )


def test_istio_versions_share_one_storage(api) -> None:
    body = {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": "r"},
        "spec": {},
    }
    api.create_namespaced_custom_object("networking.istio.io", "v1beta1", NS, "virtualservices", body)
    found = api.get_namespaced_custom_object("networking.istio.io", "v1", NS, "virtualservices", "r")
    assert found["apiVersion"] == "networking.istio.io/v1"


# --- watch ------------------------------------------------------------------------------------


def test_list_then_watch_streams_changes_since_the_list(api) -> None:
    create(api, rollout("a"))
    version = api.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["metadata"]["resourceVersion"]
    create(api, rollout("b", {"skip": "yes"}))
    api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", {"spec": {"v": 2}})
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    stream = watch.Watch().stream(
        api.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, resource_version=version, timeout_seconds=1
    )
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in stream]
    assert seen == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "a")]
    filtered = watch.Watch().stream(
        api.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
        resource_version=version, timeout_seconds=1, label_selector="!skip",
    )  # fmt: skip
    assert [e["type"] for e in filtered] == ["MODIFIED", "DELETED"]


def test_watch_delivers_live_changes_and_ends_after_its_timeout(api) -> None:
    create(api, rollout("a"))
    events: list[tuple[str, str]] = []
    started = time.monotonic()

    def later() -> None:
        time.sleep(0.3)
        create(api, rollout("b"))

    threading.Thread(target=later).start()
    for event in watch.Watch().stream(api.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, timeout_seconds=1):
        events.append((event["type"], event["object"]["metadata"]["name"]))
    assert events == [("ADDED", "a"), ("ADDED", "b")]  # no resourceVersion: current state first
    assert 0.9 < time.monotonic() - started < 3


def test_a_watch_from_a_compacted_version_gets_410(server, api) -> None:
    create(api, rollout("a"))
    create(api, rollout("b"))
    server.compact()  # history up to resourceVersion 2 is gone
    stream = watch.Watch().stream(
        api.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, resource_version="0", timeout_seconds=1
    )
    assert len(list(stream)) == 2
    with pytest.raises(ApiException) as caught:
        list(
            watch.Watch().stream(
                api.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, resource_version="1", timeout_seconds=1
            )
        )
    assert caught.value.status == 410


# --- deletion ---------------------------------------------------------------------------------


def _owned(name: str, *owners: dict[str, Any]) -> dict[str, Any]:
    refs = [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelRollout", "name": o["metadata"]["name"],
             "uid": o["metadata"]["uid"], "controller": False} for o in owners]  # fmt: skip
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": NS, "ownerReferences": refs}, "spec": {"host": "h"}}  # fmt: skip


def test_deleting_an_owner_collects_its_dependents(server, api) -> None:
    one, two = create(api, rollout("one")), create(api, rollout("two"))
    server.seed(_owned("only-one", one))
    server.seed(_owned("both", one, two))
    server.seed(_owned("orphan", two))
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "one")
    assert server.get("networking.istio.io", "destinationrules", NS, "only-one") is None
    both = server.get("networking.istio.io", "destinationrules", NS, "both")
    assert both is not None and [r["name"] for r in both["metadata"]["ownerReferences"]] == ["two"]
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "two", propagation_policy="Orphan")
    orphan = server.get("networking.istio.io", "destinationrules", NS, "orphan")
    assert orphan is not None and "ownerReferences" not in orphan["metadata"]
    with pytest.raises(ApiException) as caught:
        api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "two")
    assert caught.value.status == 404


def test_finalizers_hold_deletion_until_removed(api) -> None:
    create(api, rollout("a", metadata={"finalizers": ["canarist.io/routes"]}))
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    marked = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    assert marked["metadata"]["deletionTimestamp"]
    api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException):
        api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")


# --- events, leases, faults, the log ----------------------------------------------------------


def test_events_and_leases(server) -> None:
    reference = client.V1ObjectReference(kind="ModelRollout", name="a", namespace=NS)
    meta = client.V1ObjectMeta(name="a.1")
    client.CoreV1Api(server.api_client).create_namespaced_event(
        NS, client.CoreV1Event(metadata=meta, involved_object=reference, reason="R", message="m")
    )
    client.EventsV1Api(server.api_client).create_namespaced_event(
        NS, client.EventsV1Event(metadata=meta, event_time=dt.datetime.now(dt.UTC), regarding=reference)
    )
    assert (
        server.get("", "events", NS, "a.1") is not None and server.get("events.k8s.io", "events", NS, "a.1") is not None
    )
    leases = client.CoordinationV1Api(server.api_client)
    made = leases.create_namespaced_lease(
        NS, client.V1Lease(metadata=client.V1ObjectMeta(name="l"), spec=client.V1LeaseSpec(holder_identity="a"))
    )
    made.spec.holder_identity = "b"
    made.metadata.resource_version = None  # built-in kinds may be updated unconditionally
    assert leases.replace_namespaced_lease("l", NS, made).spec.holder_identity == "b"


def test_fault_injection(server, api) -> None:
    server.fail("/modelrollouts", 500, times=2, method="GET")
    server.fail("/modelrollouts", 503, retry_after=3, method="POST")
    for _ in range(2):
        with pytest.raises(ApiException) as caught:
            api.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
        assert caught.value.status == 500 and error(caught)["reason"] == "InternalError"
    assert api.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"] == []
    with pytest.raises(ApiException) as unavailable:
        create(api, rollout("a"))
    assert unavailable.value.status == 503 and unavailable.value.headers["Retry-After"] == "3"
    server.fail("/modelrollouts", None, delay=0.3)
    started = time.monotonic()
    create(api, rollout("a"))
    assert time.monotonic() - started >= 0.3
    assert [(r.method, r.code) for r in server.log] == [
        ("GET", 500),
        ("GET", 500),
        ("GET", 200),
        ("POST", 503),
        ("POST", 201),
    ]
    assert server.writes[-1].body["metadata"]["name"] == "a"


# --- the pure parts ---------------------------------------------------------------------------


def test_merge_patch_rfc7386() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": None, "d": 3}, "l": [2]}) == {
        "a": {"c": 2, "d": 3},
        "l": [2],
    }


def test_json_patch_rfc6902() -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    ops = [
        {"op": "replace", "path": "/b/c", "value": 2},
        {"op": "move", "from": "/a/0", "path": "/b/first"},
        {"op": "copy", "from": "/b", "path": "/d"},
        {"op": "remove", "path": "/a"},
        {"op": "add", "path": "/e~1f", "value": 0},
    ]
    assert json_patch(doc, ops) == {"b": {"c": 2, "first": 1}, "d": {"c": 2, "first": 1}, "e/f": 0}
    with pytest.raises(ApiError):
        json_patch(doc, [{"op": "remove", "path": "/zzz"}])


def test_label_selector_parsing() -> None:
    assert label_matcher("a=1, b!=2,c in (x, y),!d,e") == [
        ("a", "=", {"1"}),
        ("b", "!=", {"2"}),
        ("c", "in", {"x", "y"}),
        ("d", "!", set()),
        ("e", "exists", set()),
    ]
    with pytest.raises(ApiError):
        label_matcher("a=1 b=2")


# --- authentication and field ownership -------------------------------------------------------


def _review(api_client: Any) -> tuple[Any, dict[str, str]]:
    review = client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
    data, code, headers = client.AuthenticationV1Api(api_client).create_self_subject_review_with_http_info(review)
    assert code == 201 and data.status is not None
    return data.status.user_info, dict(headers)


def test_a_self_subject_review_says_who_the_token_is(server: LocalApiServer) -> None:
    """As the API server: a known bearer token is its user, no token is anonymous, an unknown one is 401."""
    server.tokens = {"t-alice": "alice", "t-bob": "bob"}
    for token, user, group in (("t-alice", "alice", "system:authenticated"), ("t-bob", "bob", "system:authenticated")):
        info, headers = _review(
            server.make_client(api_key={"authorization": token}, api_key_prefix={"authorization": "Bearer"})
        )
        assert (info.username, info.groups) == (user, [group])
        served = dt.datetime.strptime(headers["Date"], "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=dt.UTC)
        assert abs(served.timestamp() - time.time()) < 5  # the server's clock, which the CLI dates commands by
    info, _ = _review(server.api_client)  # no credentials
    assert (info.username, info.groups) == ("system:anonymous", ["system:unauthenticated"])
    forged = server.make_client(api_key={"authorization": "t-mallory"}, api_key_prefix={"authorization": "Bearer"})
    calls: list[Callable[[], Any]] = [
        lambda: _review(forged),
        lambda: client.CustomObjectsApi(forged).list_cluster_custom_object(GROUP, VERSION, PLURAL),
    ]
    for call in calls:
        with pytest.raises(ApiException) as caught:
            call()
        assert caught.value.status == 401 and error(caught)["reason"] == "Unauthorized"
    assert [r.user for r in server.log if r.code < 400][-1] == "system:anonymous"
    assert "alice" in [r.user for r in server.log]


def _owners(obj: dict[str, Any], subresource: str | None = None) -> dict[tuple[str, ...], str]:
    """Each owned leaf field's manager, from managedFields."""
    from controller.sandbox.localapi.documents import fields_v1_paths

    out: dict[tuple[str, ...], str] = {}
    for entry in obj["metadata"].get("managedFields") or []:
        assert entry["operation"] == "Update" and entry["fieldsType"] == "FieldsV1" and entry["time"].endswith("Z")
        if entry.get("subresource") != subresource:
            continue
        for path in fields_v1_paths(entry["fieldsV1"]):
            assert path not in out, f"{path} owned twice"
            out[path] = entry["manager"]
    return out


def test_managed_fields_name_the_writer_of_each_field(server: LocalApiServer, api: Any) -> None:
    made = api.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, rollout("a", spec={"v": 1}), field_manager="creator"
    )
    assert _owners(made) == {("metadata", "labels"): "creator", ("spec", "v"): "creator"}
    patch = {"metadata": {"annotations": {"canarist.io/command": "pause"}}}
    annotated = api.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "a", patch, field_manager="kubectl-annotate"
    )
    assert _owners(annotated)[("metadata", "annotations", "canarist.io/command")] == "kubectl-annotate"
    # without a fieldManager: the User-Agent up to its first "/"
    taken = api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", {"spec": {"v": 2}})
    assert _owners(taken)[("spec", "v")] == "OpenAPI-Generator"
    # a no-op write changes nothing, and managedFields a client sends are the server's to keep
    forged = {"metadata": {"managedFields": [{"manager": "someone-else", "operation": "Update"}]}}
    same = api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", forged, field_manager="x")
    assert same["metadata"]["managedFields"] == taken["metadata"]["managedFields"]
    assert same["metadata"]["resourceVersion"] == taken["metadata"]["resourceVersion"]
    # the status subresource has its own entries; removing a field removes its ownership
    body = {**same, "status": {"phase": "Paused"}}
    written = api.replace_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", body, field_manager="ctl")
    assert _owners(written, "status") == {("status", "phase"): "ctl"}
    removed = {"metadata": {"annotations": {"canarist.io/command": None}}}
    gone = api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", removed, field_manager="ctl")
    assert ("metadata", "annotations", "canarist.io/command") not in _owners(gone)
    assert "kubectl-annotate" not in [e["manager"] for e in gone["metadata"]["managedFields"]]  # an empty entry goes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["kubectl-annotate", "canarist-cli", "argocd", "helm"]),
            st.dictionaries(
                st.sampled_from(["a", "b", "c"]), st.one_of(st.none(), st.sampled_from(["1", "2"])), min_size=1
            ),
            st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 2), max_size=2),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_each_field_is_owned_by_the_last_manager_that_changed_it(server: LocalApiServer, writes: list[Any]) -> None:
    """Class: any sequence of merge patches by any managers; every leaf field present is owned by
    exactly the manager whose write last changed or added it, and no absent field is owned."""
    api: Any = client.CustomObjectsApi(server.api_client)
    name = f"r{len(server.objects)}"
    api.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, {**rollout(name), "spec": {}}, field_manager="creator"
    )
    expected: dict[tuple[str, ...], str] = {}
    current: dict[tuple[str, ...], Any] = {}
    for manager, notes, spec in writes:
        patch = {"metadata": {"annotations": notes}, "spec": spec}
        obj = api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name, patch, field_manager=manager)
        changes: dict[tuple[str, ...], Any] = {("metadata", "annotations", k): v for k, v in notes.items()}
        changes.update({("spec", k): v for k, v in spec.items()})
        for path, value in changes.items():
            if value is None:
                current.pop(path, None)
                expected.pop(path, None)
            elif current.get(path) != value:
                current[path] = value
                expected[path] = manager
        keyed = {p: m for p, m in _owners(obj).items() if p[:2] == ("metadata", "annotations") and len(p) == 3}
        owners = keyed | {p: m for p, m in _owners(obj).items() if p[0] == "spec" and len(p) == 2}
        assert owners == expected


KEYS = st.tuples(
    st.sampled_from(["", "canarist.io", "networking.istio.io"]),
    st.sampled_from(["pods", "modelrollouts", "virtualservices"]),
    st.sampled_from(["ml", "team-a", "prod"]),
    st.sampled_from(["a", "b", "c"]),
)
STORE_OPS = st.lists(st.tuples(st.sampled_from(["set", "del", "pop"]), KEYS), max_size=40)


@given(ops=STORE_OPS)
def test_the_object_index_answers_every_list_as_a_walk_over_every_object_would(
    ops: list[tuple[str, tuple[str, str, str, str]]],
) -> None:
    """The stand-in lists from an index by kind and namespace (bench.scale's thousands of rollouts):
    after any writes and deletes it must list exactly the objects, in the order, a full walk gives."""
    objects = Objects()
    for op, key in ops:
        if op == "set":
            objects[key] = {"metadata": {"name": key[3]}}
        elif op == "del" and key in objects:
            del objects[key]
        elif op == "pop":
            objects.pop(key, None)
    for group, plural, namespace, _ in {k for _, k in ops}:
        for where in (namespace, ""):
            walked = sorted(k for k in objects if k[:2] == (group, plural) and where in ("", k[2]))
            assert objects.of_kind(group, plural, where) == walked
