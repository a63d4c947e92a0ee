"""The pre-traffic gate in the reconcile: no route gives the canary a request before its gate passed.

The gate's observations come from a scripted GateProbe (the real edge against real Tritons is in
tests/test_triton_gate.py and tests/test_triton_rollout.py); the judge, the machine, the status and
the Events are canarist's own. Each pass is 30 s, as in test_reconcile.py.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from controller.api.gate import GoldenRequest
from controller.api.status import Phase
from controller.engine.reconcile import reconcile
from controller.judge.gate import Signature, TensorSpec, TritonObservation, TritonTarget, VersionState
from tests.memory_cluster import MemoryCluster
from tests.test_reconcile import ENV, POLICY, T0, Synthetic, annotate, status, weights

SIGNATURE = Signature((TensorSpec("features", "FP32", (-1, 4)),), (TensorSpec("score", "FP32", (-1,)),))
READY = VersionState(True, SIGNATURE)
LOADING = VersionState(False)
RENAMED = VersionState(True, Signature(SIGNATURE.inputs, (TensorSpec("probability", "FP32", (-1,)),)))


@dataclass
class Scripted:
    """A GateProbe whose canary is ``loading`` for that many looks, then ``canary``."""

    canary: VersionState = READY
    loading: int = 0
    targets: list[TritonTarget] = field(default_factory=list)

    def observe(self, target: TritonTarget, golden: Sequence[GoldenRequest]) -> TritonObservation:
        self.targets.append(target)
        canary = LOADING if len(self.targets) <= self.loading else self.canary
        return TritonObservation(target.model, target.canary_version, canary, READY)


GATED: dict[str, Any] = copy.deepcopy(POLICY)
GATED["spec"]["gate"] = {"triton": {"url": "fraud-v42:8000", "stableUrl": "fraud-v41:8000", "model": "fraud"}}


@pytest.fixture
def cluster() -> MemoryCluster:
    memory = MemoryCluster()
    memory.add(GATED)
    return memory


def drive(cluster: MemoryCluster, probe: Scripted | None, *, passes: int, start: float = T0) -> None:
    for tick in range(passes):
        (obj,), _ = cluster.list_rollouts(None)
        reconcile(obj, cluster, Synthetic(), ENV, now=start + 30 * tick + 1, gates=probe)


def gate_condition(cluster: MemoryCluster) -> dict[str, Any]:
    return next(c for c in status(cluster)["conditions"] if c["type"] == "GatePassed")


def test_the_canary_waits_for_its_version_then_starts_once_the_gate_passes(cluster: MemoryCluster) -> None:
    probe = Scripted(loading=4)
    drive(cluster, probe, passes=4)
    assert all(w == 0 for w in weights(cluster)), weights(cluster)  # stable's routes only
    assert status(cluster)["phase"] == "Initializing"
    assert "waiting for the gate: the canary's model 'fraud' is not loaded and ready yet" in status(cluster)["message"]
    assert gate_condition(cluster)["status"] == "False" and gate_condition(cluster)["reason"] == "Waiting"
    drive(cluster, probe, passes=2, start=T0 + 120)
    assert weights(cluster)[-1] == 1 and status(cluster)["phase"] == "Progressing"
    assert status(cluster)["history"][0]["reason"] == "routes in place: analysing step 0; gate passed"
    assert (
        gate_condition(cluster)["status"] == "True"
        and "signature is the stable's" in gate_condition(cluster)["message"]
    )
    gate_events = [(reason, warning) for reason, _, warning in cluster.events if reason.startswith("Gate")]
    assert gate_events == [("GateWaiting", False), ("GatePassed", False)]  # once each, not every pass
    assert {(t.url, t.stable_url, t.model) for t in probe.targets} == {("fraud-v42:8000", "fraud-v41:8000", "fraud")}


def test_a_failed_gate_fails_the_rollout_before_any_request(cluster: MemoryCluster) -> None:
    drive(cluster, Scripted(canary=RENAMED), passes=4)
    st = status(cluster)
    assert st["phase"] == "Failed" and all(w == 0 for w in weights(cluster))
    assert [t["action"] for t in st["history"]] == ["Rollback", "Complete"]
    assert st["history"][0]["reason"] == "gate failed: signature differs from the stable's: output 'score' is missing"
    assert ("GateFailed", True) in [(reason, warning) for reason, _, warning in cluster.events]
    assert gate_condition(cluster)["reason"] == "Failed"


def test_a_gate_that_never_passes_fails_at_the_progress_deadline(cluster: MemoryCluster) -> None:
    drive(cluster, Scripted(loading=10_000), passes=45)  # 22.5 minutes; the deadline is 20
    st = status(cluster)
    assert st["phase"] == "Failed" and all(w == 0 for w in weights(cluster))
    assert st["history"][0]["reason"].startswith("gate not passed within the progress deadline: the canary's model")


def test_without_a_probe_a_gated_rollout_waits_and_says_why(cluster: MemoryCluster) -> None:
    drive(cluster, None, passes=3)
    assert status(cluster)["phase"] == "Initializing" and all(w == 0 for w in weights(cluster))
    assert "this controller has no gate probe" in status(cluster)["message"]


def test_an_abort_while_waiting_is_acted_on_and_a_promote_waits_for_the_gate(cluster: MemoryCluster) -> None:
    probe = Scripted(loading=10_000)
    drive(cluster, probe, passes=2)
    annotate(cluster, "promote-full", "p1", T0 + 60)
    drive(cluster, probe, passes=2, start=T0 + 60)
    assert status(cluster)["phase"] == "Initializing" and all(w == 0 for w in weights(cluster))
    annotate(cluster, "abort", "a1", T0 + 120)
    drive(cluster, probe, passes=3, start=T0 + 120)
    st = status(cluster)
    assert st["phase"] == "Failed" and st["history"][0]["reason"].startswith("aborted by alice")
    assert all(w == 0 for w in weights(cluster))


def test_a_new_canary_revision_is_gated_again(cluster: MemoryCluster) -> None:
    probe = Scripted()
    drive(cluster, probe, passes=4)
    assert weights(cluster)[-1] > 0
    looked = len(probe.targets)
    body = cluster.get_rollout("ml-serving", "fraud-detector")
    body["spec"]["canary"] = {"name": "v43", "labels": {"app": "fraud-detector", "version": "v43"}}
    cluster.create_or_update_rollout(body)
    probe.canary, probe.loading = RENAMED, 0
    drive(cluster, probe, passes=4, start=T0 + 120)
    assert len(probe.targets) > looked
    st = status(cluster)
    assert st["phase"] == Phase.FAILED.value and weights(cluster)[-1] == 0
    assert st["history"][-2]["reason"].startswith("gate failed: signature differs")


def test_a_rollout_without_a_gate_is_never_probed() -> None:
    memory = MemoryCluster()
    memory.add(POLICY)
    probe = Scripted()
    drive(memory, probe, passes=4)
    assert probe.targets == [] and weights(memory)[-1] == 1
