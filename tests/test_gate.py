"""The gate's pure parts: its fields and rules (controller.api.gate, api.rules), and the judge of what
a Triton said (controller.judge.gate), by table and by hypothesis. The real Tritons are in
tests/test_triton_gate.py."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from controller.api.gate import GoldenRequest
from controller.api.load import PolicyError, load
from controller.judge.gate import (
    GateStatus,
    GoldenAnswer,
    OutputValue,
    Signature,
    TensorSpec,
    TritonObservation,
    VersionState,
    compatible,
    judge_triton,
    signature_problems,
    target_of,
)

FEATURES = TensorSpec("features", "FP32", (-1, 4))
SCORE = TensorSpec("score", "FP32", (-1,))
SIGNATURE = Signature((FEATURES,), (SCORE,))
READY = VersionState(ready=True, signature=SIGNATURE)
NOT_READY = VersionState(ready=False)
GOLDEN = GoldenRequest.model_validate(
    {
        "name": "one-row",
        "inputs": {"features": {"datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}},
        "outputs": {"score": {"shape": [1], "data": [0.5], "tolerance": 0.001}},
    }
)
RIGHT = GoldenAnswer({"score": OutputValue((1,), (0.5004,))}, seconds=0.01)


def seen(
    canary: VersionState = READY,
    stable: VersionState = READY,
    golden: tuple[GoldenAnswer, ...] = (RIGHT,),
    unreachable: str | None = None,
    shared: bool = True,
) -> TritonObservation:
    return TritonObservation("fraud", "2", canary, stable, unreachable, golden, shared)


# --- shapes and signatures --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stable", "canary", "fits"),
    [
        ((-1, 4), (-1, 4), True),
        ((-1, 4), (8, 4), True),  # a fixed size where the stable took any
        ((8, 4), (-1, 4), True),
        ((-1, 4), (-1, 5), False),
        ((-1, 4), (-1, 4, 1), False),
        ((), (), True),
        ((3,), (), False),
    ],
)
def test_a_shape_fits_when_the_rank_is_the_same_and_each_size_equal_or_any(
    stable: tuple[int, ...], canary: tuple[int, ...], fits: bool
) -> None:
    assert compatible(stable, canary) is fits


@pytest.mark.parametrize(
    ("canary", "problems"),
    [
        (SIGNATURE, []),
        (Signature((FEATURES,), ()), ["output 'score' is missing"]),
        (Signature((FEATURES, TensorSpec("extra", "INT64", (1,))), (SCORE,)), ["input 'extra' is new"]),
        (
            Signature((TensorSpec("features", "FP16", (-1, 4)),), (SCORE,)),
            ["input 'features': datatype FP16, the stable's is FP32"],
        ),
        (
            Signature((FEATURES,), (TensorSpec("score", "FP32", (-1, 2)),)),
            ["output 'score': shape [-1, 2], the stable's is [-1]"],
        ),
        (
            Signature((TensorSpec("features", "FP64", (4,)),), (TensorSpec("label", "FP32", (-1,)),)),
            [
                "input 'features': datatype FP64, the stable's is FP32",
                "input 'features': shape [4], the stable's is [-1, 4]",
                "output 'score' is missing",
                "output 'label' is new",
            ],
        ),
    ],
)
def test_each_difference_a_caller_would_meet_is_named(canary: Signature, problems: list[str]) -> None:
    assert sorted(signature_problems(SIGNATURE, canary)) == sorted(problems)


NAMES = st.text("abcdefgh_", min_size=1, max_size=6)
TENSORS = st.lists(
    st.builds(
        TensorSpec,
        NAMES,
        st.sampled_from(["FP32", "INT64", "BOOL"]),
        st.lists(st.integers(-1, 9), max_size=3).map(tuple),
    ),
    max_size=4,
    unique_by=lambda t: t.name,
)


@given(st.builds(Signature, TENSORS.map(tuple), TENSORS.map(tuple)))
def test_a_signature_is_compatible_with_itself(signature: Signature) -> None:
    assert signature_problems(signature, signature) == []


# --- the verdicts -------------------------------------------------------------------------------

VERDICTS = [
    ("passes", seen(), GateStatus.PASSED, "the canary's model 'fraud' version 2 is loaded and ready"),
    ("unreachable", seen(unreachable="127.0.0.1:1: refused"), GateStatus.WAITING, "Triton unreachable: 127.0.0.1:1"),
    ("canary loading", seen(canary=NOT_READY), GateStatus.WAITING, "version 2 is not loaded and ready yet"),
    ("stable unloaded", seen(stable=NOT_READY), GateStatus.FAILED, "the stable version is no longer loaded"),
    ("stable's Triton", seen(stable=NOT_READY, shared=False), GateStatus.WAITING, "the stable's Triton does not serve"),
    (
        "signature",
        seen(canary=VersionState(True, Signature((FEATURES,), ()))),
        GateStatus.FAILED,
        "signature differs from the stable's: output 'score' is missing",
    ),
    (
        "error",
        seen(golden=(GoldenAnswer(error="boom"),)),
        GateStatus.FAILED,
        "golden request one-row: the canary answered with an error: boom",
    ),
    (
        "no output",
        seen(golden=(GoldenAnswer({}),)),
        GateStatus.FAILED,
        "golden request one-row: output 'score' is missing",
    ),
    (
        "wrong shape",
        seen(golden=(GoldenAnswer({"score": OutputValue((2,), (0.5, 0.5))}),)),
        GateStatus.FAILED,
        "output 'score': shape [2], expected [1]",
    ),
    (
        "not finite",
        seen(golden=(GoldenAnswer({"score": OutputValue((1,), (math.nan,))}),)),
        GateStatus.FAILED,
        "output 'score': value 0 is nan",
    ),
    (
        "out of tolerance",
        seen(golden=(GoldenAnswer({"score": OutputValue((1,), (0.52,))}),)),
        GateStatus.FAILED,
        "output 'score': value 0 is 0.52, expected 0.5 within 0.001",
    ),
]


@pytest.mark.parametrize(("observation", "status", "reason"), [v[1:] for v in VERDICTS], ids=[v[0] for v in VERDICTS])
def test_the_verdict_on_what_triton_said(observation: TritonObservation, status: GateStatus, reason: str) -> None:
    verdict = judge_triton(observation, [GOLDEN])
    assert verdict.status is status and reason in verdict.reason, verdict


@given(
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, "down"]),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_no_pass_without_both_versions_ready_a_reachable_triton_and_a_right_finite_answer(
    canary_ready: bool, stable_ready: bool, shared: bool, unreachable: str | None, score: float
) -> None:
    answer = GoldenAnswer({"score": OutputValue((1,), (score,))})
    observation = seen(
        VersionState(canary_ready, SIGNATURE), VersionState(stable_ready, SIGNATURE), (answer,), unreachable, shared
    )
    verdict = judge_triton(observation, [GOLDEN])
    passes = (
        canary_ready and stable_ready and unreachable is None and math.isfinite(score) and abs(score - 0.5) <= 0.001
    )
    assert (verdict.status is GateStatus.PASSED) is passes
    if unreachable is not None or not canary_ready:
        assert verdict.status is GateStatus.WAITING


def test_a_golden_answer_for_each_request_or_the_edge_is_wrong() -> None:
    with pytest.raises(ValueError, match="0 golden answers for 1 requests"):
        judge_triton(seen(golden=()), [GOLDEN])


# --- the fields and their rules ---------------------------------------------------------------

BASE: dict[str, Any] = {
    "apiVersion": "canarist.io/v1alpha1",
    "kind": "ModelRollout",
    "metadata": {"name": "fraud", "namespace": "ml"},
    "spec": {
        "service": {"name": "fraud", "port": 8000},
        "stable": {"name": "v1", "labels": {"version": "v1"}},
        "canary": {"name": "v2", "labels": {"version": "v2"}},
        "gate": {"triton": {"url": "fraud-v2.ml:8000", "stableUrl": "http://fraud-v1.ml:8000", "model": "fraud"}},
        "analysis": {"metrics": [{"name": "latency", "kind": "TritonLatency", "margin": {"relative": "10%"}}]},
    },
}
TRITON_VERSION = {"mode": "TritonVersion", "triton": {"model": "fraud", "stableVersion": 1, "canaryVersion": 2}}


def policy(**gate: Any) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    triton = document["spec"]["gate"]["triton"]
    for key, value in gate.items():
        if value is None:
            triton.pop(key, None)
        else:
            triton[key] = value
    return document


def versions(document: dict[str, Any]) -> dict[str, Any]:
    document["spec"]["routing"] = TRITON_VERSION
    for side in ("stable", "canary"):
        document["spec"][side].pop("labels")
    return document


def golden(shape: list[int], data: list[float]) -> list[dict[str, Any]]:
    return [{"inputs": {"features": {"datatype": "FP32", "shape": shape, "data": data}}}]


REFUSED = [
    ("no model in Subset mode", policy(model=None), "spec.gate.triton.model: required with routing mode Subset"),
    (
        "no stableUrl in Subset mode",
        policy(stableUrl=None),
        "spec.gate.triton.stableUrl: required with routing mode Subset",
    ),
    ("a stableUrl with one Triton", versions(policy()), "spec.gate.triton.stableUrl: only with routing mode Subset"),
    (
        "another model",
        versions(policy(stableUrl=None, model="other")),
        "spec.gate.triton.model: must be routing.triton.model",
    ),
    ("a path in the url", policy(url="http://fraud:8000/v2"), "spec.gate.triton.url"),
    ("a scheme it cannot speak", policy(url="grpc://fraud:8001"), "spec.gate.triton.url"),
    ("too few values", policy(goldenRequests=golden([2, 4], [0.0] * 7)), "holds 7 values, shape [2, 4] needs 8"),
    (
        "an unknown datatype",
        policy(goldenRequests=[{"inputs": {"x": {"datatype": "BYTES", "shape": [1], "data": [1]}}}]),
        "datatype",
    ),
    ("an unknown field", policy(retries=3), "spec.gate.triton.retries"),
    ("no time at all", policy(timeout="0s"), "spec.gate.triton.timeout: must be from 1s to 30s"),
    ("longer than the loop waits", policy(timeout="1m"), "spec.gate.triton.timeout: must be from 1s to 30s"),
    ("a port out of range", policy(url="fraud-v2.ml:99999"), "spec.gate.triton.url: port 99999 is not a TCP port"),
    (
        "a value its datatype cannot hold",
        policy(goldenRequests=[{"inputs": {"pixels": {"datatype": "UINT8", "shape": [2], "data": [255, 256]}}}]),
        "spec.gate.triton.goldenRequests[0].inputs.pixels.data: 256 is not a UINT8 (integers 0 to 255)",
    ),
    (
        "a fraction for an integer",
        policy(goldenRequests=[{"inputs": {"ids": {"datatype": "INT64", "shape": [1], "data": [1.5]}}}]),
        "1.5 is not a INT64",
    ),
    (
        "a negative tolerance",
        policy(goldenRequests=[{**golden([1], [0])[0], "outputs": {"y": {"tolerance": -1}}}]),
        "tolerance",
    ),
]


@pytest.mark.parametrize(("document", "reason"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_a_gate_that_cannot_work_is_refused_naming_the_field(document: dict[str, Any], reason: str) -> None:
    with pytest.raises(PolicyError) as refused:
        load(yaml.safe_dump(document), "policy.yaml")
    assert reason in str(refused.value), str(refused.value)


def test_the_target_comes_from_the_gate_or_from_routing_triton() -> None:
    (subset,) = load(yaml.safe_dump(policy(timeout="3s")), "policy.yaml")
    target = target_of(subset)
    assert target is not None
    assert (target.url, target.stable_url, target.model, target.canary_version, target.timeout) == (
        "fraud-v2.ml:8000",
        "http://fraud-v1.ml:8000",
        "fraud",
        "",
        3.0,
    )
    (shared,) = load(yaml.safe_dump(versions(policy(stableUrl=None, model=None))), "policy.yaml")
    target = target_of(shared, "elsewhere:8000")
    assert target is not None
    assert (target.url, target.stable_url, target.model, target.stable_version, target.canary_version) == (
        "elsewhere:8000",
        None,
        "fraud",
        "1",
        "2",
    )
