"""Leader election's promises, checked on every write the local API stand-in accepts.

:class:`LeaseChecker` is a :data:`~controller.sandbox.localapi.calls.WriteObserver` for replicas of
the controller that share one Lease; each replica authenticates as its own user, named as its
Lease identity, so the API server knows which one wrote (``LocalApiServer.writer``). It keeps the
stored Lease and judges by it and by ``clock`` (the clock the replicas write into the Lease: a
virtual one in the soak, ``time.time`` for real processes):

- ``two-leaders``: the Lease passes from one holder to another only once the first holder's term
  (its ``renewTime`` + ``leaseDurationSeconds``) is over, or after it released it;
- ``write-without-lease``: a replica writes a rollout (its spec or status) or a route
  (VirtualService, DestinationRule) only while the stored Lease names it and its term is not over.

Writes by anyone else (a person, the test itself) are not judged. It also counts the take-overs
(:attr:`LeaseChecker.transitions`) and the replicas' writes it judged.

Sharded replicas (:mod:`controller.edges.kube.shards`) hold many Leases: with ``guard`` set, each
written object is judged by the Lease that guards it (its rollout's shard), and the hand-overs of
every Lease ``guard`` can name are checked alike.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller.sandbox.chaos.invariants import ISTIO, ROLLOUTS, Key, Violation
from controller.sandbox.localapi.calls import Caller

LEASES = ("coordination.k8s.io", "leases")
#: What only the leader may write.
GUARDED = (ROLLOUTS, (ISTIO, "virtualservices"), (ISTIO, "destinationrules"))
#: Seconds of slack for the clock readings behind ``renewTime`` (microseconds in the Lease).
SLACK = 0.001


@dataclass(frozen=True)
class Term:
    """Who holds the Lease, and until when (``clock`` seconds) the holder may act on its last renewal."""

    holder: str
    until: float


def term_of(lease: dict[str, Any]) -> Term:
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime")
    start = dt.datetime.fromisoformat(renewed).timestamp() if isinstance(renewed, str) else float("-inf")
    return Term(str(spec.get("holderIdentity") or ""), start + float(spec.get("leaseDurationSeconds") or 0))


@dataclass
class LeaseChecker:
    """Checks each accepted write against the stored Lease (see the module docstring)."""

    #: Who is writing (``LocalApiServer.writer``, read with the store's lock held).
    writer: Callable[[], Caller | None]
    clock: Callable[[], float]
    #: The users that are replicas (their Lease identities); others' writes are not judged.
    replicas: set[str] = field(default_factory=set)
    lease_name: str = "canarist-controller"
    #: The Lease that guards a written object (sharded: its rollout's shard's); None: ``lease_name``.
    guard: Callable[[Key], str] | None = None
    #: Which Leases' hand-overs are judged (sharded: the shard Leases); None: ``lease_name`` alone.
    judged: Callable[[str], bool] | None = None
    terms: dict[str, Term] = field(default_factory=dict)  # the stored Leases'
    transitions: int = 0
    writes: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def term(self) -> Term | None:
        """The one Lease's term (unsharded replicas)."""
        return self.terms.get(self.lease_name)

    def __call__(self, version: int, event: str, key: Key, obj: dict[str, Any]) -> None:
        caller = self.writer()
        user = caller.user if caller is not None else None
        judged = self.judged or (lambda name: name == self.lease_name)
        try:
            if key[:2] == LEASES and judged(key[3]):
                self._lease(version, event, key, obj)
            elif key[:2] in GUARDED and user in self.replicas:
                self._guarded(version, key, str(user))
        except Exception as exc:  # a checker that cannot read a write says so, and never breaks the server
            self._violate("checker-error", key, version, f"{type(exc).__name__}: {exc}")

    def _violate(self, invariant: str, key: Key, version: int, detail: str) -> None:
        self.violations.append(Violation(invariant, f"{key[1]} {key[2]}/{key[3]}", version, detail))

    def _lease(self, version: int, event: str, key: Key, obj: dict[str, Any]) -> None:
        before = self.terms.get(key[3])
        if event == "DELETED":
            self.terms.pop(key[3], None)
            return
        after = self.terms[key[3]] = term_of(obj)
        if before is None or not after.holder or after.holder == before.holder:
            return
        self.transitions += 1
        now = self.clock()
        if before.holder and now < before.until - SLACK:
            detail = f"{after.holder} took it over from {before.holder}, whose term has {before.until - now:.3f}s left"
            self._violate("two-leaders", key, version, detail)

    def _guarded(self, version: int, key: Key, user: str) -> None:
        self.writes += 1
        term, now = self.terms.get(self.guard(key) if self.guard else self.lease_name), self.clock()
        if term is None or term.holder != user:
            detail = f"written by {user} while the Lease names {term.holder if term else 'nobody'!r}"
            self._violate("write-without-lease", key, version, detail)
        elif now > term.until + SLACK:
            detail = f"written by {user} {now - term.until:.3f}s after its term ended"
            self._violate("write-without-lease", key, version, detail)
