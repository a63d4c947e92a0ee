"""The VirtualService informer (controller/edges/kube/informer.py) and the conflict check that reads it.

List once, then watch: the copy follows creates, updates and deletes in every namespace, reads the
controller's own writes at once, goes out of sync (the check lists for itself) while the API
server fails and comes back; and with it, a rollout's cross-namespace conflict check makes no
cluster-wide list, yet still refuses another team's host (issue 17: 2,000 new rollouts had each
listed every VirtualService).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from controller.api.model import ModelRollout
from controller.api.schedule import RouteState
from controller.edges.kube import KubeCluster
from controller.edges.kube.informer import Informer
from controller.sandbox.localapi import LocalApiServer, local_api_server
from controller.traffic.render import render
from tests.test_tenancy import ENV, ISTIO, _cluster_wide_lists, _vs, policy


@pytest.fixture
def server() -> Iterator[LocalApiServer]:
    with local_api_server() as fake:
        yield fake


@pytest.fixture
def informer(server: LocalApiServer) -> Iterator[Informer]:
    started = Informer(server.make_client(), watch_seconds=2, backoff=0.2).start()
    assert started.wait_synced(10)
    yield started
    started.stop()


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the informer did not catch up"
        time.sleep(0.05)


def names(informer: Informer) -> set[tuple[str, str]]:
    return {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in informer.snapshot() or []}


def test_the_copy_follows_every_namespace(server: LocalApiServer, informer: Informer) -> None:
    server.seed(_vs("team-a", "one", ["one.example.com"]))
    server.seed(_vs("team-b", "two", ["two.example.com"]))
    eventually(lambda: names(informer) == {("team-a", "one"), ("team-b", "two")})
    changed = _vs("team-b", "two", ["three.example.com"])
    server.seed(changed)
    eventually(lambda: any(o["spec"]["hosts"] == ["three.example.com"] for o in informer.snapshot() or []))
    client.CustomObjectsApi(server.make_client()).delete_namespaced_custom_object(
        ISTIO, "v1", "team-a", "virtualservices", "one"
    )
    eventually(lambda: names(informer) == {("team-b", "two")})
    time.sleep(2.5)  # past one watch: it lists again and stays in sync
    assert names(informer) == {("team-b", "two")} and informer.lists >= 2


def test_an_api_outage_takes_it_out_of_sync_until_a_list_succeeds(server: LocalApiServer) -> None:
    server.fail("/virtualservices", 503, times=3, method="GET")
    informer = Informer(server.make_client(), watch_seconds=2, backoff=0.2).start()
    try:
        assert informer.snapshot() is None  # not yet in sync: the check lists for itself
        assert informer.wait_synced(10) and informer.snapshot() == []
    finally:
        informer.stop()


def owner(edge: KubeCluster, **fields: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    body = policy(**fields)
    created = edge.create_or_update_rollout(body)
    return created, render(ModelRollout.model_validate(body), RouteState(5), ENV)


def test_the_conflict_check_reads_the_copy_and_still_refuses_another_teams_host(
    server: LocalApiServer, informer: Informer
) -> None:
    edge = KubeCluster(server.make_client(), propagation_delay=0)
    edge.virtual_services = informer
    server.seed(_vs("edge", "public", ["api.example.com"]))
    eventually(lambda: ("edge", "public") in names(informer))
    start = len(server.log)
    rollout, desired = owner(edge, namespace="team-a", hosts=["api.example.com"])
    found = edge.route_conflicts(rollout, desired)
    assert [(c.host, c.namespace, c.name) for c in found] == [("api.example.com", "edge", "public")]
    fresh, routes = owner(edge, namespace="team-b")
    assert edge.route_conflicts(fresh, routes) == []
    edge.apply_routes(fresh, routes)
    assert _cluster_wide_lists(server, start) == []  # every check read the copy


def test_the_controllers_own_write_is_in_the_copy_before_its_watch_event(
    server: LocalApiServer, informer: Informer
) -> None:
    """Two rollouts started in one pass for the same public host: the second must see the first's
    VirtualService at once, not when the watch delivers it."""
    edge = KubeCluster(server.make_client(), propagation_delay=0)
    edge.virtual_services = informer
    informer.stop()  # no more watch events: only the write-through can tell
    informer._synced.set()
    first, routes = owner(edge, namespace="team-a", hosts=["api.example.com"])
    edge.apply_routes(first, routes)
    second, theirs = owner(edge, namespace="team-b", hosts=["api.example.com"])
    found = edge.route_conflicts(second, theirs)
    assert ("api.example.com", "team-a") in {(c.host, c.namespace) for c in found}
