"""The pre-traffic gate against real Tritons: ``canarist gate`` and the edge it runs, nothing mocked.

Routing mode TritonVersion (one Triton, versions side by side): a ready canary passes with its
golden requests; a version Triton does not serve, or one still loading, is "not yet" (exit 3); a
version that cannot load stays "not yet" (the controller fails it at the progress deadline); a
version policy that unloads the stable fails; a golden output outside its tolerance fails naming
the output. Routing mode Subset (a Triton per version): a canary whose model config changes an
output's name, an input's datatype or an output's shape fails naming the tensor and the field. A
Triton that is not there is "not yet", never a pass.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.load import load
from controller.edges.triton import TritonProbe
from controller.engine.gate import run_gate
from controller.judge.gate import GateStatus, TritonTarget, judge_triton
from controller.sandbox.demo.processes import free_port
from controller.sandbox.demo.triton import Tensor, TritonServer, inference_count
from tests.hostile_http import HostileServer, silent
from tests.triton_fixture import FEATURES, SCORE, fraud_model, scorer

CANARIST = Path(sys.executable).parent / "canarist"
ROW = [0.5, 0.5, 0.5, 0.5]
EXPECTED = [1 / (1 + math.exp(-2.0)), 0.5]  # the scorer: sigmoid of the features' sum


def golden(expected: list[float] | None = None, tolerance: float = 1e-4) -> list[dict[str, Any]]:
    return [
        {
            "name": "two-rows",
            "inputs": {"features": {"datatype": "FP32", "shape": [2, 4], "data": [*ROW, 0, 0, 0, 0]}},
            "outputs": {"score": {"shape": [2], "data": expected or EXPECTED, "tolerance": tolerance}},
        }
    ]


def policy(tmp: Path, gate: dict[str, Any], routing: dict[str, Any] | None = None, **extra: Any) -> Path:
    subset = routing is None
    document = {
        "apiVersion": "canarist.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "fraud", "namespace": "ml"},
        "spec": {
            "service": {"name": "triton", "port": 8000},
            "stable": {"name": "fraud-v1", **({"labels": {"version": "fraud-v1"}} if subset else {})},
            "canary": {"name": "fraud-v2", **({"labels": {"version": "fraud-v2"}} if subset else {})},
            **({"routing": routing} if routing else {}),
            "gate": {"triton": gate},
            "analysis": {"metrics": [{"name": "latency", "kind": "TritonLatency", "margin": {"relative": "10%"}}]},
            **extra,
        },
    }
    path = tmp / "policy.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def versions(canary: int, stable: int = 1) -> dict[str, Any]:
    return {"mode": "TritonVersion", "triton": {"model": "fraud", "stableVersion": stable, "canaryVersion": canary}}


def gate(path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [CANARIST, "gate", str(path), "-o", "json", *args], capture_output=True, text=True, timeout=60, check=False
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr


Start = Callable[..., TritonServer]


def test_a_ready_canary_version_with_its_golden_requests_passes(triton_factory: Start, tmp_path: Path) -> None:
    server = triton_factory([fraud_model({1: scorer(), 2: scorer()})])
    code, answer, err = gate(policy(tmp_path, {"url": server.url, "goldenRequests": golden()}, versions(2)))
    assert code == 0, (answer, err)
    assert answer["gate"] == "Passed" and [c["check"] for c in answer["checks"]] == [
        "ready",
        "stable",
        "signature",
        "golden",
    ]
    assert all(c["ok"] for c in answer["checks"])


def test_a_golden_output_outside_its_tolerance_fails_naming_the_output(triton_factory: Start, tmp_path: Path) -> None:
    server = triton_factory([fraud_model({1: scorer(), 2: scorer(scale=1.5)})])  # a retrained canary: other scores
    code, answer, _ = gate(policy(tmp_path, {"url": server.url, "goldenRequests": golden(tolerance=0.01)}, versions(2)))
    assert code == 1 and answer["gate"] == "Failed"
    assert answer["reason"].startswith(
        "golden request two-rows: output 'score': value 0 is 0.952574, expected 0.880797"
    )


def test_a_version_triton_does_not_serve_is_not_yet(triton_factory: Start, tmp_path: Path) -> None:
    server = triton_factory([fraud_model({1: scorer(), 2: scorer()})])
    code, answer, _ = gate(policy(tmp_path, {"url": server.url}, versions(3)))
    assert code == 3 and answer["gate"] == "Waiting"
    assert answer["reason"] == "the canary's model 'fraud' version 3 is not loaded and ready yet"


#: A Triton that takes new versions while it runs, as a team's repository gets them.
POLLING = ("--model-control-mode=poll", "--repository-poll-secs=1", "--exit-on-error=false")


def test_a_version_still_loading_is_not_yet_then_passes(triton_factory: Start, tmp_path: Path) -> None:
    server = triton_factory([fraud_model({1: scorer()})], options=POLLING)
    fraud_model({2: scorer(load_s=4)}).write(server.repository)  # the canary arrives, and loads for 4 s
    path = policy(tmp_path, {"url": server.url}, versions(2))
    code, answer, _ = gate(path)
    assert code == 3 and answer["reason"] == "the canary's model 'fraud' version 2 is not loaded and ready yet"
    deadline = time.monotonic() + 30
    while code == 3 and time.monotonic() < deadline:
        time.sleep(0.5)
        code, answer, _ = gate(path)
    assert code == 0, answer


def test_a_version_that_cannot_load_stays_not_yet(triton_factory: Start, tmp_path: Path) -> None:
    server = triton_factory([fraud_model({1: scorer()})], options=POLLING)
    fraud_model({2: scorer(broken=True)}).write(server.repository)
    log = server.workdir / "tritonserver.log"
    deadline = time.monotonic() + 20
    while "this version cannot load" not in log.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.2)
    code, answer, _ = gate(policy(tmp_path, {"url": server.url}, versions(2)))
    assert code == 3 and answer["reason"] == "the canary's model 'fraud' version 2 is not loaded and ready yet"


def test_a_version_policy_that_unloads_the_stable_fails(triton_factory: Start, tmp_path: Path) -> None:
    server = triton_factory([fraud_model({1: scorer(), 2: scorer()}, policy="latest: { num_versions: 1 }")])
    code, answer, _ = gate(policy(tmp_path, {"url": server.url}, versions(2)))
    assert code == 1 and answer["gate"] == "Failed"
    assert "version policy unloaded it" in answer["reason"]


def test_a_triton_that_is_not_there_is_not_yet_never_a_pass(tmp_path: Path) -> None:
    url = f"127.0.0.1:{free_port()}"
    code, answer, _ = gate(policy(tmp_path, {"url": url, "timeout": "2s"}, versions(2)))
    assert code == 3 and answer["gate"] == "Waiting" and answer["reason"].startswith(f"Triton unreachable: {url}")


CHANGED = {
    "an output renamed": ((FEATURES,), (Tensor("probability", "FP32", (-1,)),), "output 'score' is missing"),
    "an input's datatype": ((Tensor("features", "FP64", (-1, 4)),), (SCORE,), "input 'features': datatype FP64"),
    "an output's shape": ((FEATURES,), (Tensor("score", "FP32", (-1, 2)),), "output 'score': shape [-1, 2]"),
}


@pytest.mark.parametrize("change", list(CHANGED))
def test_a_canary_whose_signature_changed_fails_naming_the_tensor(
    change: str, triton_factory: Start, tmp_path: Path
) -> None:
    inputs, outputs, why = CHANGED[change]
    stable = triton_factory([fraud_model({1: scorer()})])
    canary = triton_factory([fraud_model({1: scorer()}, inputs=inputs, outputs=outputs)])
    spec = {"url": canary.url, "stableUrl": stable.url, "model": "fraud", "goldenRequests": golden()}
    code, answer, _ = gate(policy(tmp_path, spec))
    assert code == 1 and answer["gate"] == "Failed"
    assert answer["reason"].startswith(f"signature differs from the stable's: {why}"), answer["reason"]
    assert inference_count(canary) == 0  # its golden requests are not sent to a canary refused for its signature


def test_the_edge_and_the_command_see_the_same_gate(triton_factory: Start, tmp_path: Path) -> None:
    """The command is the engine's run_gate over the real edge; --triton points it elsewhere."""
    server = triton_factory([fraud_model({1: scorer(), 2: scorer()})])
    path = policy(tmp_path, {"url": f"127.0.0.1:{free_port()}", "goldenRequests": golden()}, versions(2))
    (rollout,) = load(path.read_text(), str(path))
    verdict = run_gate(rollout, TritonProbe(), server.url)
    assert verdict is not None and verdict.status is GateStatus.PASSED
    code, answer, _ = gate(path, "--triton", server.url)
    assert code == 0 and [c["check"] for c in answer["checks"]] == [c.name for c in verdict.checks]
    assert answer["triton"] == server.url


def not_triton(conn: Any, stop: Any) -> None:
    """An HTTP server that answers 200 with something that is not Triton's JSON."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\nnot json!")
    stop.wait()


def unavailable(conn: Any, stop: Any) -> None:
    """A mesh without a healthy upstream: 503 to everything."""
    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 19\r\n\r\nno healthy upstream")
    stop.wait()


@pytest.mark.parametrize("behaviour", [not_triton, unavailable, silent], ids=["not Triton", "503", "silent"])
@pytest.mark.parametrize("side", ["canary", "stable"])
def test_a_triton_that_misbehaves_is_not_yet_never_a_pass_and_never_an_exception(
    behaviour: Any, side: str, triton_factory: Start
) -> None:
    real = triton_factory([fraud_model({1: scorer()})])
    with HostileServer(behaviour) as hostile:
        broken = hostile.url.removeprefix("http://")
        urls = (broken, real.url) if side == "canary" else (real.url, broken)
        target = TritonTarget(urls[0], "fraud", "", "", stable_url=urls[1], timeout=1.0)
        began = time.monotonic()
        observation = TritonProbe().observe(target, [])
        assert time.monotonic() - began < 5
    verdict = judge_triton(observation, [])
    assert verdict.status is GateStatus.WAITING, verdict
    assert verdict.reason.startswith(f"Triton unreachable: {broken}"), verdict.reason


def test_a_text_output_is_compared_by_its_shape_not_by_its_values(triton_factory: Start, tmp_path: Path) -> None:
    source = scorer().replace(
        'pb_utils.Tensor("score", score)',
        'pb_utils.Tensor("score", score), pb_utils.Tensor("label", np.array([b"ok"] * len(score), dtype=object))',
    )
    outputs = (SCORE, Tensor("label", "BYTES", (-1,)))
    server = triton_factory([fraud_model({1: source, 2: source}, outputs=outputs)])
    code, answer, _ = gate(policy(tmp_path, {"url": server.url, "goldenRequests": golden()}, versions(2)))
    assert code == 0, answer
