"""The workload's faults: what people, kubelets and istiod do to the rollouts while canarist runs them.

:class:`Workload` acts between the soak's passes (:meth:`Workload.step`): with probability ``rate``
per pass (times the share of the rollouts still under way, so the last ones are not hammered by
every event) it applies one event, drawn from its own ``random.Random``, to a rollout under way,
writing to the local API directly as the actor would (a kubelet's pod status, a person's edit,
``canarist promote``, ``kubectl delete``). The kinds (counted in :attr:`Workload.injected`):

- ``workload-pod-flap``: a canary pod turns unready, and ready again one to three passes later;
- ``workload-new-revision``: a new canary (subset name and version label, with a ready pod): the
  rollout must restart on it;
- ``workload-policy-edit``: the steps, the alpha or the metrics edited, within edits that keep each
  canary's truth (a latency SLO of 250 or 300 ms, an error margin of 0.2-0.3 points, either order);
- ``workload-promote``, ``workload-abort``, ``workload-pause``: a steering command as the CLI writes
  it (:func:`controller.engine.steering.command_annotations`, field manager ``canarist-cli``, a
  person's name, a unique id, dated by the controller's clock); a promote goes to 100 % one time in
  three. Half the commands arrive in the middle of the next pass, before one of the controller's
  requests (the workload wraps the API's ``request_filter``), so they land between its read of a
  rollout and its write. A rollout Paused for two passes with no command pending is resumed
  (``workload-resume``);
- ``workload-delete``: the rollout deleted mid-step; its finalizer must restore the adopted routes,
  and it leaves the outcome judging (:attr:`Workload.deleted`);
- ``istio-slow-reconciled``: with probability ``rate`` per Istio write, istiod's ``Reconciled``
  report comes 0.5-4 virtual seconds late; the controller waits up to 2 of them
  (:meth:`Workload.edge_settings`: its wait moves the virtual clock istiod reports on).

An event goes first to a kind not injected yet, so a short run meets every kind. With ``rate`` 0
the workload does nothing at all (istiod reports nothing, as in a soak without it).
"""

from __future__ import annotations

import copy
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from controller.api.model import GROUP, PLURAL, VERSION
from controller.api.names import COMMAND_ANNOTATION
from controller.engine.steering import CLI_FIELD_MANAGER, command_annotations
from controller.judge.machine import CommandKind
from controller.sandbox.localapi import LocalApiServer
from controller.sandbox.localapi.calls import Caller, Injection, RequestFilter
from controller.sandbox.localapi.resources import Key


class WorkloadKind(StrEnum):
    POD_FLAP = "workload-pod-flap"
    NEW_REVISION = "workload-new-revision"
    POLICY_EDIT = "workload-policy-edit"
    PROMOTE = "workload-promote"
    ABORT = "workload-abort"
    PAUSE = "workload-pause"
    DELETE = "workload-delete"
    ISTIO_SLOW = "istio-slow-reconciled"


#: How often each kind is drawn per event (istiod's lateness is drawn per Istio write instead).
WEIGHTS: dict[WorkloadKind, float] = {
    WorkloadKind.POD_FLAP: 3.0,
    WorkloadKind.NEW_REVISION: 1.0,
    WorkloadKind.POLICY_EDIT: 2.0,
    WorkloadKind.PROMOTE: 1.0,
    WorkloadKind.ABORT: 0.5,
    WorkloadKind.PAUSE: 1.0,
    WorkloadKind.DELETE: 0.5,
}
RESUME = "workload-resume"
PEOPLE = ("alice", "bob", "carol")
STEPS = ([5, 25, 50, 100], [10, 50, 100], [5, 20, 40, 70, 100], [25, 100])
ALPHAS = (0.01, 0.05, 0.1)
LATENCY_SLOS = ("250ms", "300ms")
ERROR_MARGINS = ("0.2%", "0.25%", "0.3%")
#: Virtual seconds the controller waits for istiod's report, and istiod's lateness when it is late.
ISTIO_WAIT = 2.0
ISTIO_LAG = (0.5, 4.0)
FINAL_PHASES = ("Succeeded", "Failed")
ISTIO = "networking.istio.io"


@dataclass
class Workload:
    """The workload's events on ``api`` (see the module docstring); ``tick`` is the soak's pass in
    virtual seconds."""

    api: LocalApiServer
    seed: int
    rate: float = 0.0
    tick: float = 30.0
    istio_lag: tuple[float, float] = ISTIO_LAG
    injected: Counter[str] = field(default_factory=Counter)
    #: The rollouts deleted ("namespace/name"): their outcome is not judged, their release is.
    deleted: set[str] = field(default_factory=set)
    #: istiod's virtual clock, in seconds: the controller's waits move it, and each pass by ``tick``.
    istio_now: float = 0.0
    _rng: random.Random = field(init=False, repr=False)
    _istio_rng: random.Random = field(init=False, repr=False)
    _unready: dict[tuple[str, str], float] = field(default_factory=dict, repr=False)  # pod -> back at
    _paused_since: dict[str, float] = field(default_factory=dict, repr=False)
    _commands: int = field(default=0, repr=False)
    _population: int = field(default=0, repr=False)  # the most rollouts seen at once
    #: Commands to land mid-pass: rollout key, command, who, id, issue time.
    _arriving: list[tuple[str, CommandKind, str, str, float]] = field(default_factory=list, repr=False)
    _arrival_rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"workload-{self.seed}")
        self._istio_rng = random.Random(f"istio-{self.seed}")  # per write: it must not shift the events
        self._arrival_rng = random.Random(f"arrival-{self.seed}")  # per request, likewise
        if self.rate > 0:
            self.api.istio_status = True
            self.api.istio_report_due = self._report_due
            self.api.request_filter = self._arrivals(self.api.request_filter)

    def edge_settings(self) -> dict[str, Any]:
        """The controller's KubeCluster settings: wait for istiod's report on istiod's virtual clock."""
        if self.rate <= 0:
            return {}
        return {"propagation_delay": ISTIO_WAIT, "sleep": self._istio_sleep, "clock": self._istio_clock}

    def step(self, now: float) -> None:
        """Between two passes, at ``now`` (the controller's virtual clock): :meth:`catch_up`, then
        maybe one new event."""
        if self.rate <= 0:
            return
        rollouts = self.catch_up(now)
        active = sorted(
            key
            for key, obj in rollouts.items()
            if _phase(obj) not in FINAL_PHASES and not obj["metadata"].get("deletionTimestamp")
        )
        self._population = max(self._population, len(rollouts))
        if not active or self._rng.random() >= self.rate * len(active) / self._population:
            return
        uncovered = [k for k in WEIGHTS if not self.injected[k.value]]
        kind = uncovered[0] if uncovered else self._rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        self.apply(kind, self._rng.choice(active), now)

    def catch_up(self, now: float) -> dict[str, dict[str, Any]]:
        """A pass of time without a new event: istiod catches up ``tick`` seconds, flapped pods due
        back are ready, long-paused rollouts are resumed. Returns the rollouts as stored then."""
        self._istio_sleep(self.tick)
        self._land(len(self._arriving))  # those the pass did not take
        for (namespace, pod), back in sorted(self._unready.items()):
            if back <= now:
                del self._unready[(namespace, pod)]
                self._set_ready(namespace, pod, ready=True)
        rollouts = self._rollouts()
        self._resume(rollouts, now)
        return rollouts

    def apply(self, kind: WorkloadKind, key: str, now: float) -> None:
        """One event of ``kind`` on rollout ``key`` ("namespace/name") at ``now``."""
        self.injected[kind.value] += 1
        namespace, _, name = key.partition("/")
        match kind:
            case WorkloadKind.POD_FLAP:
                self._flap(namespace, name, now)
            case WorkloadKind.NEW_REVISION:
                self._new_revision(namespace, name)
            case WorkloadKind.POLICY_EDIT:
                self._edit_policy(namespace, name)
            case WorkloadKind.PROMOTE:
                full = self._rng.random() < 1 / 3
                self.command(key, CommandKind.PROMOTE_FULL if full else CommandKind.PROMOTE, now, arrival="either")
            case WorkloadKind.ABORT:
                self.command(key, CommandKind.ABORT, now, arrival="either")
            case WorkloadKind.PAUSE:
                self.command(key, CommandKind.PAUSE, now, arrival="either")
            case WorkloadKind.DELETE:
                self.deleted.add(key)
                self.api.handle("DELETE", _path(namespace, name), {}, None, "", caller=Caller("carol", "kubectl"))
            case WorkloadKind.ISTIO_SLOW:
                raise ValueError("istiod's lateness is drawn per Istio write, not applied to a rollout")

    def command(
        self, key: str, kind: CommandKind, now: float, *, arrival: Literal["now", "mid-pass", "either"] = "now"
    ) -> str:
        """A steering command on rollout ``key`` as ``canarist <kind>`` writes it: now, or before one of
        the controller's requests in the next pass, or either (one time in two); returns its id."""
        self._commands += 1
        by, command_id = self._rng.choice(PEOPLE), f"chaos-{self.seed}-{self._commands}"
        with self.api.cond:  # a request of a late write may be landing one meanwhile
            self._arriving.append((key, kind, by, command_id, now))
        if arrival == "now" or (arrival == "either" and self._rng.random() < 0.5):
            self._land(len(self._arriving))
        return command_id

    def _land(self, count: int) -> None:
        """Write the ``count`` oldest arriving commands (one to a rollout since deleted is lost)."""
        with self.api.cond:
            landing, self._arriving[:count] = self._arriving[:count], []
            for key, kind, by, command_id, at in landing:
                namespace, _, name = key.partition("/")
                if self.api.get(GROUP, PLURAL, namespace, name) is not None:
                    body = {"metadata": {"annotations": command_annotations(kind, by=by, command_id=command_id, at=at)}}
                    self._patch(namespace, name, body, Caller(by, CLI_FIELD_MANAGER))

    def _arrivals(self, inner: RequestFilter | None) -> RequestFilter:
        """``inner`` (the API's fault schedule, if any), with arriving commands landing before a request
        (a quarter of the requests while one waits)."""

        def arrivals(method: str, path: str, query: dict[str, str]) -> Injection | None:
            with self.api.cond:
                if self._arriving and self._arrival_rng.random() < 0.25:
                    self._land(1)
            return inner(method, path, query) if inner is not None else None

        return arrivals

    # --- the kinds ---

    def _flap(self, namespace: str, name: str, now: float) -> None:
        labels = (self._rollout(namespace, name)["spec"].get("canary") or {}).get("labels") or {}
        with self.api.cond:
            pods = sorted(
                key[3]
                for key, pod in self.api.objects.items()
                if key[:3] == ("", "pods", namespace)
                and labels.items() <= ((pod.get("metadata") or {}).get("labels") or {}).items()
            )
        if pods:
            pod = self._rng.choice(pods)
            self._unready[(namespace, pod)] = now + self._rng.randint(1, 3) * self.tick
            self._set_ready(namespace, pod, ready=False)

    def _new_revision(self, namespace: str, name: str) -> None:
        canary = self._rollout(namespace, name)["spec"]["canary"]
        number = re.fullmatch(r"v(\d+)", str(canary.get("name")))
        version = f"v{int(number.group(1)) + 1 if number else 3}"
        labels = {**(canary.get("labels") or {}), "version": version}
        metadata = {"name": f"{name}-{version}-0", "namespace": namespace, "labels": labels}
        ready = {"conditions": [{"type": "Ready", "status": "True"}]}
        self.api.seed({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": ready})  # deployed first
        edit = {"spec": {"canary": {"name": version, "labels": labels}}}
        self._patch(namespace, name, edit, Caller("bob", "kubectl"))

    def _edit_policy(self, namespace: str, name: str) -> None:
        spec = self._rollout(namespace, name)["spec"]
        what = self._rng.choice(("steps", "alpha", "metrics"))
        if what == "steps":
            steps = self._rng.choice([s for s in STEPS if s != spec["strategy"].get("steps")])
            edit: dict[str, Any] = {"strategy": {"steps": steps}}
        elif what == "alpha":
            edit = {"analysis": {"alpha": self._rng.choice([a for a in ALPHAS if a != spec["analysis"].get("alpha")])}}
        else:
            latency = {"name": "latency-p99", "kind": "IstioLatency", "quantile": 0.99}
            latency["slo"] = {"max": self._rng.choice(LATENCY_SLOS)}
            errors = {"name": "error-rate", "kind": "IstioErrorRate", "slo": {"max": "2%"}}
            errors["margin"] = {"absolute": self._rng.choice(ERROR_MARGINS)}
            metrics = [latency, errors] if self._rng.random() < 0.5 else [errors, latency]
            edit = {"analysis": {"metrics": metrics}}
        self._patch(namespace, name, {"spec": edit}, Caller("alice", "kubectl"))

    def _resume(self, rollouts: dict[str, dict[str, Any]], now: float) -> None:
        """Resume each rollout Paused for two passes with no command pending (a person comes back)."""
        for key in [k for k in self._paused_since if _phase(rollouts.get(k)) != "Paused"]:
            del self._paused_since[key]
        for key, obj in sorted(rollouts.items()):
            if _phase(obj) != "Paused" or obj["metadata"].get("deletionTimestamp"):
                continue
            since = self._paused_since.setdefault(key, now)
            pending = COMMAND_ANNOTATION in (obj["metadata"].get("annotations") or {})
            if now - since >= 2 * self.tick and not pending:
                self.injected[RESUME] += 1
                self.command(key, CommandKind.RESUME, now)
                self._paused_since[key] = now

    # --- istiod ---

    def _report_due(self, key: Key) -> float | None:
        """When istiod reports an Istio write (called by the API with its lock held): late, or at once."""
        if self.injected[WorkloadKind.ISTIO_SLOW.value] and self._istio_rng.random() >= self.rate:
            return None
        self.injected[WorkloadKind.ISTIO_SLOW.value] += 1
        return self.istio_now + self._istio_rng.uniform(*self.istio_lag)

    def _istio_clock(self) -> float:
        return self.istio_now

    def _istio_sleep(self, seconds: float) -> None:
        self.istio_now += seconds
        self.api.report_istio(self.istio_now)

    # --- the API ---

    def _rollouts(self) -> dict[str, dict[str, Any]]:
        with self.api.cond:
            return {f"{k[2]}/{k[3]}": copy.deepcopy(o) for k, o in self.api.objects.items() if k[:2] == (GROUP, PLURAL)}

    def _rollout(self, namespace: str, name: str) -> dict[str, Any]:
        found = self.api.get(GROUP, PLURAL, namespace, name)
        if found is None:
            raise LookupError(f"modelrollout {namespace}/{name} not found")
        return found

    def _patch(self, namespace: str, name: str, body: dict[str, Any], caller: Caller) -> None:
        self.api.handle("PATCH", _path(namespace, name), {}, body, "application/merge-patch+json", caller=caller)

    def _set_ready(self, namespace: str, pod: str, *, ready: bool) -> None:
        """The kubelet's report: the pod's Ready condition (a pod since deleted stays deleted)."""
        found = self.api.get("", "pods", namespace, pod)
        if found is not None:
            found["status"] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
            self.api.seed(found)


def _path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


def _phase(obj: dict[str, Any] | None) -> str | None:
    status = (obj or {}).get("status")
    return str(status.get("phase")) if isinstance(status, dict) else None
