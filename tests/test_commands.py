"""The in-cluster commands through the real ``canarist`` executable, against the fake API server.

Each test runs ``canarist status|promote|abort|pause|resume|retry`` as a subprocess with a kubeconfig
written in ``tmp_path``, then looks at what the fake API server stored and received. The rollout's
status is produced by real reconciles (the Kubernetes edge against the fake, a synthetic metrics
source), so ``status`` shows evidence and decisions as the controller writes them.

The kubeconfig's current context points at a closed port: every command that works proves that
``--context`` is honoured, and the context's namespace is the default for ``-n`` (as in kubectl).
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.names import COMMAND_ANNOTATION, COMMAND_AT_ANNOTATION, COMMAND_BY_ANNOTATION, COMMAND_ID_ANNOTATION
from controller.api.times import parse_time, rfc3339
from controller.edges.kube import KubeCluster
from controller.engine.reconcile import reconcile
from controller.sandbox.demo.processes import free_port
from controller.sandbox.localapi import LocalApiServer, local_api_server
from tests.test_reconcile import ENV, POLICY, Synthetic

CANARIST = Path(sys.executable).parent / "canarist"
#: The fixture's rollout history ends two minutes ago: commands the CLI dates now are fresh.
START = math.floor(time.time() / 60) * 60 - 8 * 60
NS, NAME = "ml-serving", "fraud-detector"
OTHER_NS, OTHER = "ml-batch", "ranker"
USER = "alice"  # whom the kubeconfig's token authenticates as
BY = f"{USER} (claimed, written by manager canarist-cli)"


def ready_pod(version: str) -> dict[str, Any]:
    labels = {"app": NAME, "version": version}
    metadata = {"name": f"{NAME}-{version}-0", "namespace": NS, "labels": labels}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def rollout(api: LocalApiServer, namespace: str = NS, name: str = NAME) -> dict[str, Any]:
    found = api.get("canarist.io", "modelrollouts", namespace, name)
    assert found is not None
    return found


@pytest.fixture
def api() -> Iterator[LocalApiServer]:
    """A fake API server holding two rollouts: fraud-detector at step 1 after six real reconciles
    (start, holds, an advance: evidence and history in its status) and a fresh one elsewhere."""
    with local_api_server() as server:
        server.tokens = {"dummy-token": USER}
        server.seed(copy.deepcopy(POLICY))
        for version in ("v41", "v42"):
            server.seed(ready_pod(version))
        other = copy.deepcopy(POLICY)
        other["metadata"] = {"name": OTHER, "namespace": OTHER_NS}
        server.seed(other)
        cluster = KubeCluster(server.api_client, propagation_delay=0.0)
        source = Synthetic()
        for tick in range(6):
            reconcile(cluster.get_rollout(NS, NAME), cluster, source, ENV, now=START + 60 * tick + 1)
        status = rollout(server)["status"]
        assert (status["phase"], status["currentStep"], status["canaryWeight"]) == ("Progressing", 1, 5)
        assert [t["action"] for t in status["history"]] == ["Start", "Advance"]
        yield server


def write_kubeconfig(path: Path, server: str) -> Path:
    """Contexts ``fake`` (the server, namespace ml-serving) and ``offline`` (a closed port: current)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "fake", "cluster": {"server": server, "insecure-skip-tls-verify": True}},
            {"name": "offline", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}},
        ],
        "users": [{"name": "tester", "user": {"token": "dummy-token"}}],
        "contexts": [
            {"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": NS}},
            {"name": "offline", "context": {"cluster": "offline", "user": "tester", "namespace": NS}},
        ],
        "current-context": "offline",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def kubeconfig(api: LocalApiServer, tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", api.url)


def canarist(
    kubeconfig: Path, *args: str, context: str | None = "fake", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [str(CANARIST), *args, "--kubeconfig", str(kubeconfig)]
    if context is not None:
        command += ["--context", context]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def canarist_many(kubeconfig: Path, calls: list[tuple[str, ...]]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands side by side (each one is mostly the interpreter starting)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda args: canarist(kubeconfig, *args), calls))


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit status 2, nothing on stdout, one line on stderr naming the problem."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("canarist: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- status -----------------------------------------------------------------------------------


def test_status_table_lists_every_rollout_in_every_namespace(api: LocalApiServer, kubeconfig: Path) -> None:
    out = ok(canarist(kubeconfig, "status"))
    header, *rows = out.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "PHASE", "STEP", "WEIGHT", "MESSAGE"]
    by_name = {row.split()[1]: row.split() for row in rows}
    assert by_name[NAME][:5] == [NS, NAME, "Progressing", "1", "5%"]
    assert "no harm detected on every metric" in out
    assert by_name[OTHER][:5] == [OTHER_NS, OTHER, "Pending", "-", "-"]
    only = ok(canarist(kubeconfig, "status", "-n", OTHER_NS))
    assert OTHER in only and NAME not in only


def test_status_of_one_rollout_shows_its_evidence_and_decisions(api: LocalApiServer, kubeconfig: Path) -> None:
    status = rollout(api)["status"]
    out = ok(canarist(kubeconfig, "status", NAME))  # no -n: the context's namespace
    assert out == ok(canarist(kubeconfig, "status", NAME, "-n", NS))
    assert f"evidence at the last analysis ({status['lastAnalysisAt']}):" in out
    evidence = out.split("evidence at the last analysis", 1)[1].split("decisions:", 1)[0]
    assert evidence.splitlines()[1].split() == [
        "METRIC",
        "VERDICT",
        "E-VALUE",
        "THRESHOLD",
        "PROOF",
        "CANARY",
        "N",
        "WHY",
    ]
    for metric in status["metrics"]:
        row = next(line for line in evidence.splitlines() if line.startswith(metric["name"] + " "))
        cells = row.split()
        assert cells[1] == metric["verdict"]
        assert float(cells[2]) == pytest.approx(metric["eValue"], rel=1e-2)
        assert float(cells[3]) == pytest.approx(metric["threshold"], rel=1e-2)
        assert cells[5] == str(metric["requests"]["canary"])
    decisions = out.split("decisions:", 1)[1].strip().splitlines()
    assert len(decisions) == 2
    assert "Initializing/0 -> Progressing/0  Start: routes in place" in decisions[0]
    assert "Progressing/0 -> Progressing/1  Advance: no harm detected on every metric" in decisions[1]


def test_status_json_shows_the_evidence_behind_the_last_decision(api: LocalApiServer, kubeconfig: Path) -> None:
    docs = json.loads(ok(canarist(kubeconfig, "status", "-o", "json")))
    assert {(d["namespace"], d["name"]) for d in docs} == {(NS, NAME), (OTHER_NS, OTHER)}
    (doc,) = json.loads(ok(canarist(kubeconfig, "status", NAME, "-o", "json")))
    status = doc["status"]
    assert status == rollout(api)["status"]  # the stored status, whole
    last = status["history"][-1]
    assert last["action"] == "Advance" and status["message"] == last["reason"]
    assert status["lastAnalysisAt"] == last["at"]  # the metrics are the evidence of that decision
    assert {m["name"] for m in status["metrics"]} == {"latency-p99", "error-rate"}
    for metric in status["metrics"]:
        assert metric["verdict"] in ("Pass", "Inconclusive")
        assert not metric["sloBreached"]
        assert isinstance(metric["eValue"], float) and metric["eValue"] < metric["threshold"]
        assert metric["threshold"] > 1 and metric["requests"]["canary"] >= 500  # the policy's minRequests
        assert str(metric["requests"]["canary"]) in status["message"]


def test_status_yaml_is_the_json_document(api: LocalApiServer, kubeconfig: Path) -> None:
    as_json = json.loads(ok(canarist(kubeconfig, "status", NAME, "-o", "json")))
    assert yaml.safe_load(ok(canarist(kubeconfig, "status", NAME, "-o", "yaml"))) == as_json


# --- steering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (("promote", NAME), "promote"),
        (("promote", NAME, "--full"), "promote-full"),
        (("abort", NAME), "abort"),
        (("pause", NAME), "pause"),
        (("resume", NAME), "resume"),
        (("retry", NAME), "retry"),
    ],
)
def test_a_steering_command_writes_the_command_annotations(
    api: LocalApiServer, kubeconfig: Path, args: tuple[str, ...], command: str
) -> None:
    before = rollout(api)
    writes = len(api.writes)
    out = ok(canarist(kubeconfig, *args, "-n", NS))
    expected = f"{NS}/{NAME}: {command} requested; the controller acts on its next reconcile (it expires in 10 min)\n"
    assert out == expected
    after = rollout(api)
    annotations = after["metadata"]["annotations"]
    assert annotations[COMMAND_ANNOTATION] == command
    assert annotations[COMMAND_BY_ANNOTATION] == USER  # as the API server authenticated the CLI
    assert annotations[COMMAND_ID_ANNOTATION].isdigit()
    assert annotations[COMMAND_ID_ANNOTATION] != before["status"].get("lastCommandId")
    issued = parse_time(annotations[COMMAND_AT_ANNOTATION])
    assert issued is not None and abs(issued - time.time()) < 10  # the API server's clock (its Date)
    # who am I (a SelfSubjectReview), then one merge patch of the annotations as canarist-cli;
    # spec, status and routes untouched
    review, patch = api.writes[writes:]
    assert (review.method, review.path, review.code) == (
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        201,
    )
    assert (patch.method, patch.code, patch.user) == ("PATCH", 200, USER)
    assert patch.path == f"/apis/canarist.io/v1alpha1/namespaces/{NS}/modelrollouts/{NAME}"
    assert patch.query["fieldManager"] == "canarist-cli"
    assert set(patch.body) == {"metadata"} and set(patch.body["metadata"]) == {"annotations"}
    assert after["spec"] == before["spec"] and after["status"] == before["status"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]


def test_the_controller_records_who_asked_and_consumes_the_command(api: LocalApiServer, kubeconfig: Path) -> None:
    cluster = KubeCluster(api.api_client, propagation_delay=0.0)
    for args, phase in ((("pause", NAME), "Paused"), (("resume", NAME), "Progressing"), (("pause", NAME), "Paused")):
        ok(canarist(kubeconfig, *args))  # the context's namespace
        command_id = rollout(api)["metadata"]["annotations"][COMMAND_ID_ANNOTATION]
        reconcile(cluster.get_rollout(NS, NAME), cluster, Synthetic(), ENV, now=time.time())
        status = rollout(api)["status"]
        assert status["phase"] == phase
        assert status["history"][-1]["reason"] == f"{args[0]}d by {BY}"
        assert status["lastCommandId"] == command_id
        assert COMMAND_ANNOTATION not in (rollout(api)["metadata"].get("annotations") or {})  # consumed
    assert [t["action"] for t in status["history"]][-3:] == ["Pause", "Resume", "Pause"]


def test_the_local_user_name_is_not_who_asked(api: LocalApiServer, kubeconfig: Path) -> None:
    """LOGNAME=admin changes nothing: the name is the one the API server authenticated; a name
    written by hand is recorded as a claim with its writer; without a SelfSubjectReview the CLI
    says the name is only the local one."""
    cluster = KubeCluster(api.api_client, propagation_delay=0.0)
    env = {**os.environ, "LOGNAME": "admin", "USER": "admin", "USERNAME": "admin"}
    ok(canarist(kubeconfig, "pause", NAME, env=env))
    assert rollout(api)["metadata"]["annotations"][COMMAND_BY_ANNOTATION] == USER
    reconcile(cluster.get_rollout(NS, NAME), cluster, Synthetic(), ENV, now=time.time())
    assert rollout(api)["status"]["message"] == f"paused by {BY}"
    forged = {
        COMMAND_ANNOTATION: "resume",
        COMMAND_BY_ANNOTATION: "admin\x1b[2K\rreally admin",
        COMMAND_ID_ANNOTATION: "hand-1",
        COMMAND_AT_ANNOTATION: rfc3339(time.time()),
    }
    cluster.annotate_rollout(NS, NAME, forged, field_manager="kubectl-annotate")
    reconcile(cluster.get_rollout(NS, NAME), cluster, Synthetic(), ENV, now=time.time())
    message = rollout(api)["status"]["message"]
    assert message.startswith("resumed by admin") and message.endswith("(claimed, written by manager kubectl-annotate)")
    assert "\x1b" not in message and "\r" not in message
    api.fail("selfsubjectreviews", 404)  # a server without the API: the CLI says whose name it is
    ok(canarist(kubeconfig, "pause", NAME, env=env))
    assert rollout(api)["metadata"]["annotations"][COMMAND_BY_ANNOTATION] == "local user admin"


def test_status_prints_no_escape_sequence_a_user_wrote(api: LocalApiServer, kubeconfig: Path) -> None:
    """The real executable, a status and a command annotation full of terminal escapes, C1 controls
    and bidi overrides: the table shows their text and none of them."""
    nasty = "\x1b[2J\x1b]0;pwned\x07\x9b31m\u202eok\u202c\r\nFAKE ROW"
    stored = rollout(api)
    stored["status"]["message"] = nasty
    stored["status"]["metrics"][0]["reason"] = nasty
    stored["status"]["history"][-1]["reason"] = f"paused by {nasty}"
    stored["status"]["metrics"][0]["eValue"] = nasty  # a wrong type is shown, not a crash
    api.seed(stored)
    for args in (("status",), ("status", NAME)):
        out = ok(canarist(kubeconfig, *args))
        assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out and "\r" not in out
        assert "FAKE ROW" in out and not any(line.startswith("FAKE ROW") for line in out.splitlines())


# --- errors: one line, exit 2 -----------------------------------------------------------------


def test_a_missing_rollout_is_one_line_and_exit_2(api: LocalApiServer, kubeconfig: Path) -> None:
    def stored() -> int:  # successful writes that store something (a SelfSubjectReview stores nothing)
        return len([w for w in api.writes if w.code < 400 and "selfsubjectreviews" not in w.path])

    writes = stored()
    calls = [("status", "nope"), ("status", "nope", "-o", "json"), ("pause", "nope"), ("promote", "nope", "--full")]
    for proc in canarist_many(kubeconfig, calls):
        one_line_error(proc, f"modelrollout {NS}/nope not found")
    assert stored() == writes  # nothing was created


def test_a_rollout_in_another_namespace_is_not_found(api: LocalApiServer, kubeconfig: Path) -> None:
    one_line_error(canarist(kubeconfig, "abort", NAME, "-n", OTHER_NS), f"modelrollout {OTHER_NS}/{NAME} not found")
    assert COMMAND_ANNOTATION not in (rollout(api)["metadata"].get("annotations") or {})


def test_an_unreachable_api_server_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    with local_api_server() as stopped:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", stopped.url)
    calls = [("status",), ("status", NAME, "-o", "json"), ("pause", NAME), ("promote", NAME, "--full"), ("retry", NAME)]
    for proc in canarist_many(kubeconfig, calls):
        one_line_error(proc, "API server unavailable", "Connection refused")


def test_the_current_context_is_used_without_context(api: LocalApiServer, kubeconfig: Path) -> None:
    # the current context is "offline": a closed port
    one_line_error(canarist(kubeconfig, "pause", NAME, context=None), "API server unavailable")
    assert COMMAND_ANNOTATION not in (rollout(api)["metadata"].get("annotations") or {})


def test_an_unknown_context_is_one_line_and_exit_2(api: LocalApiServer, kubeconfig: Path) -> None:
    one_line_error(canarist(kubeconfig, "status", context="prod"), "cannot reach Kubernetes", "prod")


def test_report_by_name_reads_the_rollout_through_the_api(
    api: LocalApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    out = ok(canarist(kubeconfig, "report", NAME, "--out", str(tmp_path / "report")))
    assert out.strip() == str(tmp_path / "report" / "index.html")
    page = (tmp_path / "report" / "index.html").read_text()
    assert f"{NS}/{NAME}" in page and "Advance" in page
    assert (tmp_path / "report" / "weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one_line_error(canarist(kubeconfig, "report", "missing", "--out", str(tmp_path / "x")), "missing", "not found")
