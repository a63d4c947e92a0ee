"""Human commands: acted on exactly once, only while fresh, recorded with who (claimed) wrote them; and
nothing a user wrote reaches a terminal as a control character or an escape sequence.

The command tables run the real reconcile through the Kubernetes edge (the official client) against
the local API stand-in, which keeps creationTimestamp, managedFields and field managers as the
API server does; the text properties run over arbitrary Unicode.
"""

from __future__ import annotations

import copy
import time
import unicodedata
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client

from controller.api.names import COMMAND_ANNOTATION, COMMAND_AT_ANNOTATION, COMMAND_BY_ANNOTATION, COMMAND_ID_ANNOTATION
from controller.api.times import rfc3339
from controller.cli.cluster_commands import render_documents
from controller.cli.tables import rollouts_table
from controller.edges.kube import KubeCluster
from controller.engine.reconcile import reconcile
from controller.engine.steering import BY_LIMIT, COMMAND_TTL, check_command, settle_command
from controller.sandbox.localapi import LocalApiServer, local_api_server
from tests.test_reconcile import ENV, POLICY, Synthetic

NS, NAME = POLICY["metadata"]["namespace"], POLICY["metadata"]["name"]
DROPPED = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def shown_safely(text: str) -> bool:
    """No control, format (bidi) or separator character and no ESC anywhere; line breaks only as lines."""
    return all(unicodedata.category(c) not in DROPPED for line in text.split("\n") for c in line)


# --- expiry: a table through the API ------------------------------------------------------------


def ready_pods(api: LocalApiServer) -> None:
    for version in ("v41", "v42"):
        labels = {"app": NAME, "version": version}
        metadata = {"name": f"{NAME}-{version}-0", "namespace": NS, "labels": labels}
        status = {"conditions": [{"type": "Ready", "status": "True"}]}
        api.seed({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": status})


@pytest.fixture
def api() -> Iterator[LocalApiServer]:
    with local_api_server() as server:
        ready_pods(server)
        yield server


def command(kind: str, command_id: str, issued: float | None, by: str = "alice") -> dict[str, str]:
    out = {COMMAND_ANNOTATION: kind, COMMAND_BY_ANNOTATION: by, COMMAND_ID_ANNOTATION: command_id}
    return out | ({COMMAND_AT_ANNOTATION: rfc3339(issued)} if issued is not None else {})


def pauses(obj: Mapping[str, Any]) -> int:
    return [t.get("action") for t in (obj.get("status") or {}).get("history", [])].count("Pause")


def expired_events(api: LocalApiServer) -> list[str]:
    return [
        str(o.get("note"))
        for (group, plural, _, _), o in api.objects.items()
        if (group, plural) == ("events.k8s.io", "events") and o.get("reason") == "CommandExpired"
    ]


def tick(cluster: KubeCluster, now: float) -> dict[str, Any]:
    reconcile(cluster.get_rollout(NS, NAME), cluster, Synthetic(), ENV, now=now)
    return cluster.get_rollout(NS, NAME)


MIN = 60.0


def STARTED(at: float) -> dict[str, Any]:  # noqa: N802 - reads as the constant it stands for
    """The status of a rollout started at ``at``: step 0 at 1 %, as the controller records it."""
    start = {"at": rfc3339(at), "fromPhase": "Initializing", "toPhase": "Progressing", "fromStep": 0}
    start |= {"toStep": 0, "action": "Start", "reason": "routes in place: analysing step 0", "canaryWeight": 1}
    return {"phase": "Progressing", "currentStep": 0, "stepStartedAt": rfc3339(at), "history": [start]}


# (command age at the first reconcile in seconds (None: no issue time), object re-created from an
#  export that still carries the command, acted on)
TABLE = [
    (5.0, False, True),
    (9 * MIN, False, True),
    (COMMAND_TTL + 60, False, False),
    (2 * 3600.0, False, False),
    (-10 * MIN, False, False),  # issued in the future: a wrong clock or a forged time
    (None, False, False),
    (5.0, True, False),  # written before the object was created: a restore or a re-apply
    (9 * MIN, True, False),
    (2 * 3600.0, True, False),
]


@pytest.mark.parametrize(("age", "recreated", "acted"), TABLE)
def test_a_command_is_acted_on_once_and_only_while_fresh(
    api: LocalApiServer, age: float | None, recreated: bool, acted: bool
) -> None:
    cluster = KubeCluster(api.api_client, propagation_delay=0.0)
    now = time.time()
    body = copy.deepcopy(POLICY)
    body["metadata"]["creationTimestamp"] = rfc3339(round(now) - 3 * 3600)  # made long ago
    body["status"] = STARTED(now - 3600)  # a pause holds a started rollout (before its start: nothing to hold)
    api.seed(body)
    cluster.annotate_rollout(NS, NAME, command("pause", "c1", None if age is None else now - age))
    if recreated:  # export, delete, apply the export again (its annotations included)
        exported = cluster.get_rollout(NS, NAME)
        client.CustomObjectsApi(api.api_client).delete_namespaced_custom_object(
            "canarist.io", "v1alpha1", NS, "modelrollouts", NAME
        )
        time.sleep(max(0.0, 1.0 - (time.time() % 1)))  # a new second: creationTimestamp has seconds only
        cluster.create_or_update_rollout(exported)
        now = time.time()
    first = tick(cluster, now)
    assert pauses(first) == int(acted)
    assert not any(k in (first["metadata"].get("annotations") or {}) for k in command("x", "x", 0.0)), "not removed"
    assert len(expired_events(api)) == int(not acted)
    if acted:
        assert first["status"]["lastCommandId"] == "c1" and first["status"]["phase"] == "Paused"
        assert "paused by alice (claimed, " in first["status"]["history"][-1]["reason"]
    else:
        assert "lastCommandId" not in first["status"] and first["status"]["phase"] != "Paused"
        assert "not acted on" in expired_events(api)[0]
    again = tick(cluster, now + 30)  # nothing is acted on twice
    assert pauses(again) == int(acted) and len(expired_events(api)) == int(not acted)


def test_a_backup_taken_before_the_command_was_acted_on_does_not_replay_it(api: LocalApiServer) -> None:
    """The object is exported while a fresh command sits on it; the command is acted on; the export
    is restored into a new cluster a moment later: the restored command is not acted on again."""
    cluster = KubeCluster(api.api_client, propagation_delay=0.0)
    cluster.create_or_update_rollout(POLICY)
    now = time.time()
    tick(cluster, now - 5)  # started: a pause has weights to hold
    cluster.annotate_rollout(NS, NAME, command("pause", "c1", now))  # as the CLI does: after the object's creation
    backup = cluster.get_rollout(NS, NAME)
    assert pauses(tick(cluster, now)) == 1
    time.sleep(max(0.0, 1.0 - (time.time() % 1)))
    with local_api_server() as other:
        ready_pods(other)
        restored = KubeCluster(other.api_client, propagation_delay=0.0)
        restored.create_or_update_rollout(backup)
        after = tick(restored, time.time())
        assert pauses(after) == 0 and after["status"]["phase"] == "Progressing"
        assert len(expired_events(other)) == 1 and "before this object was created" in expired_events(other)[0]


class Racing(KubeCluster):
    """The real edge, with someone writing a new command right after the controller's read."""

    race: dict[str, str] | None = None

    def get_rollout(self, namespace: str, name: str) -> dict[str, Any]:
        found = super().get_rollout(namespace, name)
        if self.race is not None:
            KubeCluster(self.api_client).annotate_rollout(namespace, name, self.race)
            self.race = None
        return found


def test_a_command_written_while_the_controller_settles_another_is_not_lost(api: LocalApiServer) -> None:
    """Removal is a compare-and-swap: a newer command written between the read and the removal stays."""
    cluster = Racing(api.api_client, propagation_delay=0.0)
    cluster.create_or_update_rollout(POLICY)
    now = time.time()
    tick(cluster, now - 5)  # started: a pause has weights to hold
    cluster.annotate_rollout(NS, NAME, command("abort", "c1", now))
    acted_on = cluster.get_rollout(NS, NAME)
    cluster.race = command("pause", "c2", now)
    assert settle_command(cluster, acted_on, acted="c1", now=now) is None  # 409: nothing removed
    assert cluster.get_rollout(NS, NAME)["metadata"]["annotations"][COMMAND_ID_ANNOTATION] == "c2"
    paused = tick(cluster, now + 1)
    assert paused["status"]["phase"] == "Paused" and paused["status"]["lastCommandId"] == "c2"
    assert COMMAND_ANNOTATION not in (paused["metadata"].get("annotations") or {})


# --- expiry and identity: the rules, as a table of objects --------------------------------------

T = 1_900_000_000.0


def obj(
    issued: float | None, *, created: float = T - 3600, restarted: float | None = None, **extra: Any
) -> dict[str, Any]:
    history = [{"at": rfc3339(restarted), "action": "Restart"}] if restarted is not None else []
    metadata = {"name": NAME, "namespace": NS, "creationTimestamp": rfc3339(created), **extra}
    metadata["annotations"] = command("promote", "c9", issued) | metadata.get("annotations", {})
    return {"metadata": metadata, "status": {"history": history}}


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        (obj(T - 1), None),
        (obj(T - COMMAND_TTL), None),
        (obj(T - COMMAND_TTL - 1), "commands expire after 600s"),
        (obj(T + 60), None),  # within the allowed clock skew
        (obj(T + 600), "in the future"),
        (obj(None), "when it was issued is unknown"),
        (obj(T - 30, created=T - 10), "before this object was created"),
        (obj(T - 10, created=T - 10), None),  # the same second: timestamps have seconds only
        (obj(T - 30, restarted=T - 10), "before the canary changed"),
        (obj(T - 5, restarted=T - 10), None),
        (obj(T, annotations={COMMAND_ANNOTATION: "promote-everything"}), "unknown command"),
        (obj(T, annotations={COMMAND_AT_ANNOTATION: "yesterday"}), "unknown"),
        (obj(T, annotations={COMMAND_AT_ANNOTATION: "2030-03-17T11:46:40"}), "unknown"),  # no offset: whose clock?
    ],
)
def test_the_expiry_rules(case: dict[str, Any], problem: str | None) -> None:
    found = check_command(case, T)
    assert found is not None
    if problem is None:
        assert found.problem is None and found.command is not None
    else:
        assert found.problem is not None and problem in found.problem and found.command is None


def test_a_done_command_is_not_acted_on_again() -> None:
    done = obj(T - 1)
    done["status"]["lastCommandId"] = "c9"
    found = check_command(done, T)
    assert found is not None and found.done and found.command is None


@pytest.mark.parametrize(
    ("managed", "by"),
    [
        (None, "alice (claimed, writer unknown)"),
        ([], "alice (claimed, writer unknown)"),
        (
            [
                {
                    "manager": "kubectl-annotate",
                    "fieldsV1": {"f:metadata": {"f:annotations": {"f:canarist.io/command": {}}}},
                }
            ],
            "alice (claimed, written by manager kubectl-annotate)",
        ),
        (
            [
                {"manager": "helm", "fieldsV1": {"f:spec": {}}},
                {
                    "manager": "canarist-cli",
                    "fieldsV1": {"f:metadata": {"f:annotations": {"f:canarist.io/command": {}}}},
                },
                {"manager": "x", "subresource": "status", "fieldsV1": {"f:metadata": {"f:annotations": {}}}},
            ],
            "alice (claimed, written by manager canarist-cli)",
        ),
        ([{"manager": "kubectl-edit", "fieldsV1": {"f:spec": {}}}], "alice (claimed, writer unknown)"),
    ],
)
def test_who_asked_is_a_claim_with_its_writer(managed: Any, by: str) -> None:
    extra = {} if managed is None else {"managedFields": managed}
    found = check_command(obj(T, **extra), T)
    assert found is not None and found.by == by


# --- nothing a user wrote reaches a terminal raw ------------------------------------------------

NASTY = st.sampled_from(
    [
        "\x1b[2J\x1b[H",  # clear the screen
        "\x1b]0;owned\x07",  # set the window title
        "\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\",  # a hyperlink
        "\x9b31m",  # C1 CSI
        "\u202eevil\u202c",  # bidi override
        "\u2066x\u2069",
        "\r\n\t\x00\x7f\x85\u2028",
        "a" * 400,
    ]
)
TEXT = st.one_of(st.text(max_size=300), NASTY, st.lists(st.one_of(st.text(max_size=20), NASTY)).map("".join))


@settings(max_examples=200, deadline=None)
@given(by=TEXT, manager=TEXT, kind=TEXT)
def test_who_asked_is_stored_printable_and_bounded(by: str, manager: str, kind: str) -> None:
    managed = [{"manager": manager, "fieldsV1": {"f:metadata": {"f:annotations": {"f:canarist.io/command": {}}}}}]
    case = obj(T, managedFields=managed, annotations={COMMAND_BY_ANNOTATION: by})
    found = check_command(case, T)
    assert found is not None and found.problem is None
    assert shown_safely(found.by) and "\n" not in found.by and len(found.by) <= BY_LIMIT
    case["metadata"]["annotations"][COMMAND_ANNOTATION] = kind
    odd = check_command(case, T)
    assert odd is not None and shown_safely(odd.text) and shown_safely(odd.problem or "")


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), TEXT),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)
METRIC = st.fixed_dictionaries(
    {},
    optional={
        k: st.one_of(TEXT, JSON)
        for k in ("name", "verdict", "reason", "eValue", "threshold", "eValueNonInferiority", "sloBreached")
    }
    | {"requests": st.one_of(JSON, st.fixed_dictionaries({"canary": st.one_of(TEXT, JSON)}))},
)
TRANSITION = st.fixed_dictionaries(
    {},
    optional={
        k: st.one_of(TEXT, JSON) for k in ("at", "fromPhase", "toPhase", "fromStep", "toStep", "action", "reason")
    },
)
STATUS = st.fixed_dictionaries(
    {},
    optional={k: st.one_of(TEXT, JSON) for k in ("phase", "currentStep", "canaryWeight", "message", "lastAnalysisAt")}
    | {"metrics": st.one_of(JSON, st.lists(st.one_of(METRIC, JSON), max_size=3))}
    | {"history": st.one_of(JSON, st.lists(st.one_of(TRANSITION, JSON), max_size=3))},
)
OBJECT = st.fixed_dictionaries(
    {"metadata": st.fixed_dictionaries({"namespace": TEXT, "name": TEXT}), "status": st.one_of(STATUS, JSON)}
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objects=st.lists(OBJECT, min_size=1, max_size=3))
def test_status_tables_print_no_control_character_and_no_escape(objects: list[dict[str, Any]]) -> None:
    """Class: any text (or any JSON value) in any status field or name: the table renders, one line
    per row, without a control character, an escape sequence or a bidi override."""
    for detailed in (False, True):
        out = rollouts_table(objects, detailed=detailed)
        assert shown_safely(out)
        if not detailed:
            assert len(out.split("\n")) == len(objects) + 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objects=st.lists(OBJECT, min_size=1, max_size=2), output=st.sampled_from(["json", "yaml"]))
def test_status_documents_print_user_text_escaped(objects: list[dict[str, Any]], output: str) -> None:
    """``status -o json|yaml`` prints the stored status whole, as data: every control character,
    escape and bidi override in it is escaped, never printed raw."""
    assert shown_safely(render_documents(objects, output))


def test_the_report_shows_user_text_without_controls(api: LocalApiServer, tmp_path: Path) -> None:
    """``canarist report``: a rollout driven by real reconciles, then a status and a claimed name
    full of escapes and bidi overrides: the page shows their text and none of them."""
    from controller.report.page import build_report

    cluster = KubeCluster(api.api_client, propagation_delay=0.0)
    cluster.create_or_update_rollout(POLICY)
    now = time.time()
    tick(cluster, now - 5)  # started: a pause has weights to hold
    nasty = "\x1b[2J\x1b]0;pwned\x07\x9b31m\u202eok\u202c\r\n\x00"
    cluster.annotate_rollout(NS, NAME, command("pause", "c1", now, by=f"mallory{nasty}"))
    stored = tick(cluster, now)
    stored["status"]["message"] = nasty
    stored["status"]["history"].append({**stored["status"]["history"][-1], "reason": nasty})
    page = build_report(stored, tmp_path / "report").index.read_text()
    assert "paused by mallory" in page and "ok" in page
    assert shown_safely(page.replace("\r\n", "\n")), [c for c in page if unicodedata.category(c) in DROPPED]
