"""Notifications (issue 18, item 1): what each decision announces, and delivery to real receivers.

The event of every action and reason (a table), the versioned payload, each sink type's delivery to
a real HTTP receiver on loopback (the generic webhook, a Slack-shaped endpoint, apprise's JSON), a
receiver that is down, slow or answers 500 (retries with backoff, a bounded queue, counted), URLs
read from a Kubernetes Secret through the official client, no secret in any log line, and the loop:
a decision is announced once, and nothing a notifier does can delay or change it.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from controller.api.load import PolicyError, load
from controller.api.notify import DEFAULT_EVENTS, NotifyEvent, SinkType
from controller.api.status import Action, MetricStatus, Phase, Requests, Verdict
from controller.cli.main import cli
from controller.edges.kube import KubeCluster
from controller.edges.notify import DeliveryError, Notifier, Sink, deliver, file_sink
from controller.edges.notify.sinks import check_url
from controller.engine import notices
from controller.engine.reconcile import Outcome
from controller.manager.loop import Manager
from controller.manager.ops import ControllerMetrics
from controller.sandbox.localapi import LocalApiServer, local_api_server
from controller.traffic.templating import default_environment
from tests.notify_receiver import receiver
from tests.test_shards import NoTraffic, holding_rollout, seed_ready_pods

SECRET = "T0SECRET/B0SECRET/xoxb-SECRET-TOKEN-0123456789"
ROOT = Path(__file__).resolve().parent.parent


def outcome(action: Action, reason: str = "why", **kwargs: Any) -> Outcome:
    fields: dict[str, Any] = {"phase": Phase.PROGRESSING, "canary_weight": 20, "step": 1, "metrics": ()}
    fields.update(kwargs)
    return Outcome("ml/scorer", action, reason, fields["phase"], fields["canary_weight"], 1, True, 60.0,
                   None, fields["step"], fields["metrics"])  # fmt: skip


ROLLOUT: dict[str, Any] = {"metadata": {"name": "scorer", "namespace": "ml"}, "spec": {}, "status": {"message": "old"}}
COUNTDOWN = {**ROLLOUT, "status": {"message": "no data (1739s left before the deadline)"}}

# --- what each decision announces --------------------------------------------------------------------

EVENTS = [
    (Action.START, "routes in place", NotifyEvent.STARTED),
    (Action.ADVANCE, "step 1 passed", NotifyEvent.ADVANCED),
    (Action.PROMOTE, "every step passed", NotifyEvent.PROMOTED),
    (Action.COMPLETE, "promoted", NotifyEvent.COMPLETED),
    (Action.PAUSE, "paused by alice", NotifyEvent.PAUSED),
    (Action.RESUME, "resumed by alice", NotifyEvent.RESUMED),
    (Action.RETRY, "retried by alice", NotifyEvent.RESTARTED),
    (Action.RESTART, "a new canary", NotifyEvent.RESTARTED),
    (Action.RESCHEDULE, "steps changed", NotifyEvent.RESTARTED),
    (Action.ROLLBACK, "regression proven: errors", NotifyEvent.ROLLED_BACK),
    (Action.ROLLBACK, "aborted by alice", NotifyEvent.ROLLED_BACK),
    (Action.ROLLBACK, "SLO breached: latency-p99 above 250ms", NotifyEvent.SLO_BREACHED),
    (Action.ROLLBACK, "gate failed: the canary's signature differs", NotifyEvent.GATE_FAILED),
    (Action.ROLLBACK, "gate not passed within the progress deadline: x", NotifyEvent.GATE_FAILED),
    (Action.HOLD, "a new reason", NotifyEvent.HELD),
    (Action.HOLD, "old", None),  # the stored reason again: said once already
    (Action.HOLD, "no data (1678s left before the deadline)", None),  # stored with 1739s: a countdown
    (Action.HOLD, "no data (12s left)", NotifyEvent.HELD),  # another reason
    (Action.NONE, "deleted", None),
]


@pytest.mark.parametrize(("action", "reason", "event"), EVENTS)
def test_each_decision_announces_its_event(action: Action, reason: str, event: NotifyEvent | None) -> None:
    stored = COUNTDOWN if "left" in reason else ROLLOUT
    assert notices.event_of(outcome(action, reason), notices.stored_message(stored)) is event


def test_every_action_is_in_the_table() -> None:
    assert {a for a, _, _ in EVENTS} == set(Action)


def test_holds_are_not_announced_unless_a_sink_asks() -> None:
    assert NotifyEvent.HELD not in DEFAULT_EVENTS and set(DEFAULT_EVENTS) | {NotifyEvent.HELD} == set(NotifyEvent)


def test_the_payload_is_versioned_plain_json_with_each_metrics_verdict() -> None:
    metric = MetricStatus(name="errors", verdict=Verdict.FAIL, reason="canary \x1b[31m8%", slo_breached=True,
                          e_value=float("nan"), threshold=40.0, estimate=0.075, interval=[0.05, float("inf")],
                          requests=Requests(stable=900, canary=100))  # fmt: skip
    done = outcome(Action.ROLLBACK, "SLO breached: errors", metrics=(metric,), phase=Phase.ROLLING_BACK,
                   canary_weight=0)  # fmt: skip
    payload = notices.notification(ROLLOUT, done, NotifyEvent.SLO_BREACHED, at=1_800_000_000, report_url="https://r/x")
    assert json.loads(json.dumps(payload, allow_nan=False)) == payload  # no NaN, no infinity: valid JSON
    assert payload == {
        "apiVersion": "canarist.io/notification/v1",
        "kind": "RolloutNotification",
        "event": "SloBreached",
        "rollout": "scorer",
        "namespace": "ml",
        "phase": "RollingBack",
        "step": 1,
        "weights": {"stable": 100, "canary": 0},
        "decision": "Rollback",
        "reason": "SLO breached: errors",
        "metrics": [
            {
                "name": "errors",
                "verdict": "Fail",
                "sloBreached": True,
                "estimate": 0.075,
                "interval": [0.05, None],
                "eValue": None,
                "threshold": 40.0,
                "requests": {"stable": 900, "canary": 100},
                "reason": "canary \ufffd8%",
            }
        ],
        "reportUrl": "https://r/x",
        "at": "2027-01-15T08:00:00Z",
    }
    assert notices.title(payload) == "ml/scorer: SloBreached at 0% canary"
    assert "- errors: Fail (SLO breached) estimate 0.075" in notices.text(payload)
    assert "Report: https://r/x" in notices.text(payload)


# --- one delivery per sink type, to a real receiver ----------------------------------------------------


def payload() -> dict[str, Any]:
    return notices.notification(ROLLOUT, outcome(Action.PROMOTE, "every step passed"), NotifyEvent.PROMOTED, at=0)


def test_the_generic_webhook_receives_the_payload_as_json() -> None:
    with receiver() as r:
        deliver(SinkType.WEBHOOK, r.url("/hooks/canarist"), payload())
        (got,) = r.wait_for(1)
    assert got.path == "/hooks/canarist" and got.headers["Content-Type"] == "application/json"
    assert got.json() == payload()


def test_a_slack_endpoint_receives_slacks_webhook_format() -> None:
    with receiver() as r:
        deliver(SinkType.SLACK, r.url(f"/services/{SECRET}"), payload())
        (got,) = r.wait_for(1)
    body = got.json()
    assert got.path == f"/services/{SECRET}"
    assert body["text"] == "ml/scorer: Promoted at 20% canary"
    assert [b["type"] for b in body["blocks"]] == ["header", "section"]
    assert body["blocks"][1]["text"]["type"] == "mrkdwn" and "every step passed" in body["blocks"][1]["text"]["text"]


def test_apprise_delivers_its_own_json_format() -> None:
    with receiver() as r:
        deliver(SinkType.APPRISE, r.url("/apprise", scheme="json"), payload())
        (got,) = r.wait_for(1)
    body = got.json()
    assert body["title"] == "ml/scorer: Promoted at 20% canary" and "every step passed" in body["message"]


URLS = [
    (
        SinkType.TEAMS,
        "https://prod-00.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?"
        "api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=xyz",
        True,
    ),
    (SinkType.DISCORD, "https://discord.com/api/webhooks/123456/abcdef", True),
    (SinkType.EMAIL, "mailtos://alerts:pw@smtp.example.com?to=team@example.com", True),
    (SinkType.DISCORD, "mailto://a:b@example.com", False),  # another service's URL
    (SinkType.EMAIL, "https://discord.com/api/webhooks/123456/abcdef", False),
    (SinkType.APPRISE, "nonsense://x", False),
    (SinkType.WEBHOOK, "ftp://example.com/x", False),
    (SinkType.SLACK, "hooks.slack.com/services/x", False),
]


@pytest.mark.parametrize(("kind", "url", "valid"), URLS)
def test_each_sink_type_takes_its_services_urls_only(kind: SinkType, url: str, valid: bool) -> None:
    if valid:
        check_url(kind, url)
        return
    with pytest.raises(DeliveryError) as refused:
        check_url(kind, url)
    assert url not in str(refused.value) and (urlsplit(url).hostname or "-") not in str(refused.value)


@pytest.mark.parametrize(("kind", "answers"), [(SinkType.WEBHOOK, [500]), (SinkType.SLACK, [404])])
def test_an_error_answer_is_a_delivery_error_without_the_url(kind: SinkType, answers: list[int | float]) -> None:
    with receiver(answers) as r, pytest.raises(DeliveryError) as failed:
        deliver(kind, r.url(f"/services/{SECRET}"), payload())
    assert str(failed.value) == f"{kind.value}: HTTP {answers[0]}"


# --- the notifier: off the loop, retried, bounded, counted, silent about secrets ---------------------


def notifier_to(url: str, kind: SinkType = SinkType.WEBHOOK, **kwargs: Any) -> tuple[Notifier, Counter[str]]:
    counted: Counter[str] = Counter()
    sink = Sink("team", kind, lambda: url, tuple(NotifyEvent))
    made = Notifier(defaults=[sink], count=lambda result: counted.update([result]), backoff=0.05, **kwargs)
    return made.start(), counted


def settle(notifier: Notifier, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while notifier.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert notifier.pending() == 0


def test_a_500_is_retried_with_backoff_until_delivered() -> None:
    with receiver([500, 500]) as r:
        notifier, counted = notifier_to(r.url())
        notifier.notify(ROLLOUT, outcome(Action.ADVANCE), NotifyEvent.ADVANCED)
        r.wait_for(3)
        settle(notifier)
        notifier.close()
    assert counted == {"retried": 2, "sent": 1}
    assert [g.json()["event"] for g in r.received] == ["Advanced"] * 3


def test_a_sink_that_is_down_fails_after_its_attempts_and_says_so_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with receiver() as r:
        down = r.url(f"/services/{SECRET}")
    caplog.set_level(logging.INFO, logger="canarist.notify")
    notifier, counted = notifier_to(down, SinkType.SLACK, attempts=3)
    notifier.notify(ROLLOUT, outcome(Action.ROLLBACK, "regression proven"), NotifyEvent.ROLLED_BACK)
    settle(notifier)
    notifier.close()
    assert counted == {"retried": 2, "failed": 1}
    (failure,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert failure == "notification RolledBack of ml/scorer to team failed after 3 attempts: Slack: URLError"


def test_a_slow_sink_never_delays_the_loop() -> None:
    with receiver([3.0]) as r:
        notifier, counted = notifier_to(r.url())
        started = time.monotonic()
        for _ in range(20):
            notifier.notify(ROLLOUT, outcome(Action.ADVANCE), NotifyEvent.ADVANCED)
        assert time.monotonic() - started < 0.5  # queued, not sent: the receiver takes 3 s for the first
        r.wait_for(20, seconds=30)
        settle(notifier)
        notifier.close()
    assert counted == {"sent": 20}


def test_a_full_queue_drops_and_counts_instead_of_growing() -> None:
    with receiver([2.0]) as r:
        notifier, counted = notifier_to(r.url(), queue_size=3)
        for _ in range(10):
            notifier.notify(ROLLOUT, outcome(Action.ADVANCE), NotifyEvent.ADVANCED)
        settle(notifier)
        notifier.close()
    assert counted["dropped"] >= 7 - 1 and counted["sent"] + counted["dropped"] == 10  # one may be in flight


def test_no_log_line_holds_a_sinks_secret_whatever_happens(caplog: pytest.LogCaptureFixture) -> None:
    """Every library at DEBUG, the receiver answering 500, slow, then down: the URL's secret part
    never reaches a log record (its message, arguments or exception)."""
    caplog.set_level(logging.DEBUG)
    with receiver([500, 1.0, 403]) as r:
        for kind in (SinkType.WEBHOOK, SinkType.SLACK):
            notifier, _ = notifier_to(r.url(f"/services/{SECRET}"), kind, attempts=2)
            for _ in range(2):
                notifier.notify(ROLLOUT, outcome(Action.ADVANCE), NotifyEvent.ADVANCED)
            settle(notifier)
            notifier.close()
        apprised, _ = notifier_to(r.url(f"/x/{SECRET}", scheme="json"), SinkType.APPRISE, attempts=1)
        apprised.notify(ROLLOUT, outcome(Action.ADVANCE), NotifyEvent.ADVANCED)
        settle(apprised)
        apprised.close()
        down = r.url(f"/services/{SECRET}")
    notifier, _ = notifier_to(down, SinkType.WEBHOOK, attempts=2)
    notifier.notify(ROLLOUT, outcome(Action.ADVANCE), NotifyEvent.ADVANCED)
    settle(notifier)
    notifier.close()
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        assert "SECRET" not in text, text


# --- URLs from Kubernetes Secrets ---------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[LocalApiServer]:
    with local_api_server(istio_status=True) as server:
        yield server


def secret(namespace: str, name: str, data: Mapping[str, str]) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "data": encoded}


def with_sinks(*sinks: Mapping[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(ROLLOUT)
    obj["spec"]["notify"] = {"sinks": list(sinks)}
    return obj


def sink(name: str, kind: str, secret_name: str, key: str, events: Sequence[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "type": kind, "urlFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}
    if events is not None:
        out["events"] = list(events)
    return out


def test_a_rollouts_sinks_read_their_urls_from_secrets_in_its_namespace(
    api: LocalApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="canarist.notify")
    cluster = KubeCluster(api.make_client(), propagation_delay=0.0)
    with receiver() as r:
        api.seed(secret("ml", "alerts", {"webhook": r.url("/w") + "\n", "slack": r.url(f"/services/{SECRET}")}))
        api.seed(secret("other", "alerts", {"webhook": r.url("/theirs")}))
        counted: Counter[str] = Counter()
        notifier = Notifier(read_secret=cluster.read_secret, count=lambda x: counted.update([x]), attempts=1).start()
        obj = with_sinks(
            sink("hook", "Webhook", "alerts", "webhook"),
            sink("chat", "Slack", "alerts", "slack", ["RolledBack"]),  # not for a promotion
            sink("lost", "Webhook", "missing", "webhook"),
            sink("typo", "Webhook", "alerts", "nope"),
        )
        notifier.notify(obj, outcome(Action.PROMOTE), NotifyEvent.PROMOTED)
        (got,) = r.wait_for(1)
        settle(notifier)
        notifier.close()
    assert got.path == "/w" and got.json()["event"] == "Promoted"
    assert counted == {"sent": 1, "failed": 2}
    failures = sorted(rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING)
    assert failures == [
        "notification Promoted of ml/scorer to ml/lost failed after 1 attempts: get secret ml/missing: 404 "
        'secrets "missing" not found',
        "notification Promoted of ml/scorer to ml/typo failed after 1 attempts: secret ml/alerts: no key 'nope'",
    ]


def test_a_controller_wide_sink_reads_its_url_from_a_file_at_each_delivery(tmp_path: Path) -> None:
    path = tmp_path / "url"
    with receiver() as r:
        path.write_text(r.url("/first"))
        notifier = Notifier(defaults=[file_sink("platform", SinkType.WEBHOOK, path)]).start()
        notifier.notify(ROLLOUT, outcome(Action.START), NotifyEvent.STARTED)
        r.wait_for(1)
        path.write_text(r.url("/rotated"))  # a Secret volume updated in place
        notifier.notify(ROLLOUT, outcome(Action.PROMOTE), NotifyEvent.PROMOTED)
        r.wait_for(2)
        notifier.notify(ROLLOUT, outcome(Action.HOLD, "new"), NotifyEvent.HELD)  # not wanted by default
        settle(notifier)
        notifier.close()
    assert [g.path for g in r.received] == ["/first", "/rotated"]


def test_sink_names_are_unique_and_secrets_are_never_inline() -> None:
    policy = yaml_policy()
    policy["spec"]["notify"] = {"sinks": [sink("a", "Slack", "s", "k"), sink("a", "Webhook", "s", "k")]}
    with pytest.raises(PolicyError, match=r"spec\.notify\.sinks\[1\]\.name: duplicate sink name 'a'"):
        load(json.dumps(policy), "p.yaml")
    policy["spec"]["notify"] = {"sinks": [{"name": "a", "type": "Slack", "url": "https://hooks.slack.com/x"}]}
    with pytest.raises(PolicyError, match="url"):
        load(json.dumps(policy), "p.yaml")


def yaml_policy() -> dict[str, Any]:
    import yaml

    loaded: dict[str, Any] = yaml.safe_load((ROOT / "policies/fraud-detector-istio.yaml").read_text())
    loaded.pop("status", None)
    return loaded


# --- the loop -----------------------------------------------------------------------------------------


class Broken:
    def notify(self, rollout: Mapping[str, Any], outcome: Outcome, event: NotifyEvent) -> None:
        raise RuntimeError("a notifier's bug")


def test_the_loop_announces_each_decision_once_and_a_broken_notifier_changes_nothing(api: LocalApiServer) -> None:
    now = [1_800_000_000.0]
    cluster = KubeCluster(api.make_client(), propagation_delay=0.0)
    metrics = ControllerMetrics()
    with receiver() as r:
        api.seed(secret("ml", "alerts", {"url": r.url("/team")}))
        seed_ready_pods(api, "scorer")
        events = ["Started", "Held"]
        api.seed(holding_rollout("scorer", {"sinks": [sink("team", "Webhook", "alerts", "url", events)]}))
        notifier = Notifier(read_secret=cluster.read_secret, count=metrics.notified).start()
        manager = Manager(cluster, NoTraffic(), default_environment(), lambda: now[0], notifier=notifier)
        for _ in range(4):  # Start, then holds for want of data: the same reason each time
            manager.tick()
            now[0] += 61
        r.wait_for(2)
        settle(notifier)
        notifier.close()
    assert [g.json()["event"] for g in r.received] == ["Started", "Held"]
    assert metrics.registry.get_sample_value("canarist_notifications_total", {"result": "sent"}) == 2

    seed_ready_pods(api, "other")
    api.seed(holding_rollout("other"))
    broken = Manager(cluster, NoTraffic(), default_environment(), lambda: now[0], notifier=Broken())
    (started,) = [o for o in broken.tick() if o.key == "ml/other"]
    assert started.action is Action.START and "ml/other" not in broken.failures


# --- the command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--notify", "pager=/x"], "--notify 'pager=/x': expected TYPE=FILE with TYPE one of"),
        (["--notify", "slack"], "--notify 'slack': expected TYPE=FILE"),
        (["--notify-events", "Started,Exploded"], "--notify-events: unknown event 'Exploded'"),
        (["--report-url", "https://r/{rollout}"], "--report-url: only {namespace} and {name} may be filled in"),
    ],
)
def test_a_bad_notification_option_is_one_line_and_nothing_runs(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["run", "--prometheus", "http://127.0.0.1:9", *args])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
