"""A controller pass takes its rollouts' looks as one: the same decisions, one call of the metrics source."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from controller.api.load import load
from controller.api.model import ModelRollout
from controller.engine.batch import BatchedLooks
from controller.engine.ports import EdgeFailure
from controller.engine.reconcile import planned_look, reconcile
from controller.manager.loop import Manager
from controller.metrics.measure import plan
from controller.metrics.samples import Observation, Window
from tests.memory_cluster import MemoryCluster
from tests.test_reconcile import ENV, POLICY, T0, Synthetic

ROLLOUTS = 6


@dataclass
class Counted(Synthetic):
    """The synthetic traffic, recording which rollouts each call looked at."""

    calls: list[tuple[str, ...]] = field(default_factory=list)

    def observe(
        self, rollouts: Sequence[ModelRollout], windows: Mapping[str, Sequence[Window]], at: float
    ) -> tuple[dict[str, Observation], EdgeFailure | None]:
        self.calls.append(tuple(sorted(r.key for r in rollouts)))
        return super().observe(rollouts, windows, at)


def fleet(cluster: MemoryCluster) -> None:
    for i in range(ROLLOUTS):
        body = copy.deepcopy(POLICY)
        body["metadata"]["namespace"] = f"team-{i}"
        cluster.add(body)


def statuses(cluster: MemoryCluster) -> dict[str, Any]:
    objects, _ = cluster.list_rollouts(None)
    return {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o.get("status") for o in objects}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_a_pass_looks_once_for_every_rollout_and_decides_as_one_look_each() -> None:
    batched, alone = MemoryCluster(), MemoryCluster()
    fleet(batched)
    fleet(alone)
    source, own = Counted(), Counted()
    clock = Clock()
    manager = Manager(batched, source, ENV, clock)
    for tick in range(40):  # 20 minutes, a pass every 30 s
        clock.now = T0 + 30 * tick + 1
        manager.due.clear()  # every rollout due each pass, as one-look-each below
        manager.tick()
        objects, _ = alone.list_rollouts(None)
        for obj in objects:
            reconcile(obj, alone, own, ENV, now=clock.now)
    assert statuses(batched) == statuses(alone)
    batches = [c for c in source.calls if len(c) > 1]
    assert batches and all(len(c) == ROLLOUTS for c in batches)
    assert not [c for c in source.calls if len(c) == 1]  # no rollout had to look on its own
    assert len(own.calls) == len(batches) * ROLLOUTS  # the same looks, one call each


def test_a_look_the_batch_did_not_take_is_asked_of_the_source() -> None:
    cluster = MemoryCluster()
    fleet(cluster)
    source = Counted()
    objects, _ = cluster.list_rollouts(None)
    for obj in objects:  # started: the next reconcile looks
        reconcile(obj, cluster, source, ENV, now=T0 + 1)
    objects, _ = cluster.list_rollouts(None)
    planned = {p[0].key: p for o in objects if (p := planned_look(o, T0 + 61)) is not None}
    assert len(planned) == ROLLOUTS
    batch = BatchedLooks(source)
    batch.take(planned, T0 + 61)
    assert source.calls[-1] == tuple(sorted(planned))
    calls = len(source.calls)
    rollout, windows = next(iter(planned.values()))
    taken, failure = batch.observe([rollout], {rollout.key: windows}, T0 + 62)
    assert failure is None and len(source.calls) == calls  # answered from the batch
    later = (*windows, Window(windows[-1].end, windows[-1].end + 60, windows[-1].canary_share))
    batch.observe([rollout], {rollout.key: later}, T0 + 122)  # another window: asked of the source
    assert source.calls[-1] == (rollout.key,)
    assert taken[rollout.key].windows == tuple(windows)


def test_a_failed_batch_is_every_rollouts_failure_at_once() -> None:
    cluster = MemoryCluster()
    fleet(cluster)
    source = Counted(down=True)
    clock = Clock()
    manager = Manager(cluster, source, ENV, clock)
    for tick in range(6):
        clock.now = T0 + 30 * tick + 1
        manager.due.clear()
        manager.tick()
    assert all(len(c) in (ROLLOUTS, 0) for c in source.calls)


@dataclass
class Broken(Counted):
    """A store that fails with an unexpected error when asked for several rollouts at once."""

    def observe(
        self, rollouts: Sequence[ModelRollout], windows: Mapping[str, Sequence[Window]], at: float
    ) -> tuple[dict[str, Observation], EdgeFailure | None]:
        if len(rollouts) > 1:
            self.calls.append(("(failed batch)",))
            raise ValueError("one tenant's data broke the shared look")
        return super().observe(rollouts, windows, at)


def test_a_batch_that_fails_unexpectedly_leaves_each_rollout_to_its_own_look() -> None:
    cluster = MemoryCluster()
    fleet(cluster)
    source = Broken()
    clock = Clock()
    manager = Manager(cluster, source, ENV, clock)
    for tick in range(6):
        clock.now = T0 + 30 * tick + 1
        manager.due.clear()
        assert len(manager.tick()) == ROLLOUTS  # the pass goes on: no exception leaves tick()
    assert ("(failed batch)",) in source.calls
    assert sum(1 for c in source.calls if len(c) == 1 and c != ("(failed batch)",)) >= ROLLOUTS


def test_an_empty_version_label_is_a_reason_not_a_crash() -> None:
    body = copy.deepcopy(POLICY)
    body["spec"]["stable"]["labels"]["version"] = ""  # a valid label value that selects nothing
    (rollout,) = load(yaml.safe_dump(body), "empty.yaml")
    target = plan([rollout], {rollout.key: [Window(T0, T0 + 60, 0.1)]}, T0 + 60).targets[0]
    assert "empty" in target.requests_unsupported or any("empty" in m.unsupported for m in target.metrics)
