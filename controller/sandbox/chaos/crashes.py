"""A controller process that may die anywhere it talks to the API server, as after ``kill -9``.

:class:`ControllerCrash` is the death (a BaseException, which no ``except Exception`` of the
controller catches): the pass is abandoned wherever it was, and the soak starts a fresh controller
that knows only what the API says. :class:`CrashingCluster` dies before any Kubernetes edge call;
:class:`CrashingElector` before it reads or writes the Lease, and after a Lease write was accepted
but before the elector learnt of it (mid-renewal), each with probability ``crash_rate``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client

from controller.edges.kube import KubeCluster
from controller.edges.kube.leader import LeaderElector, LeaseRecord

T = TypeVar("T")


class ControllerCrash(BaseException):
    """The controller process dies here (a BaseException: the loop's ``except Exception`` lets it through)."""


def maybe_crash(rng: random.Random, crash_rate: float, where: str) -> None:
    """Die at ``where`` with probability ``crash_rate`` (drawn from ``rng``: a seed replays it)."""
    if crash_rate and rng.random() < crash_rate:
        raise ControllerCrash(where)


class CrashingCluster(KubeCluster):
    """The Kubernetes edge of a controller that may die before any call it makes (``crash_rate`` each)."""

    def __init__(
        self, api_client: Any, *, rng: random.Random, crash_rate: float, request_timeout: float, **edge: Any
    ) -> None:
        super().__init__(api_client, request_timeout=request_timeout, **{"propagation_delay": 0.0, **edge})
        self.rng, self.crash_rate = rng, crash_rate

    def _call(self, what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        maybe_crash(self.rng, self.crash_rate, what)
        return super()._call(what, fn, *args, **kwargs)


class CrashingElector(LeaderElector):
    """A replica's side of the election that may die around its Lease calls; ``pause`` is called
    between reading the Lease and writing it (where a stalled replica would wake up with a stale read)."""

    def __init__(
        self,
        *args: Any,
        rng: random.Random,
        crash_rate: float,
        pause: Callable[[str], None] = lambda where: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.rng, self.crash_rate, self.pause = rng, crash_rate, pause

    def _read(self) -> client.V1Lease | None:
        maybe_crash(self.rng, self.crash_rate, "read the lease")
        return super()._read()

    def _write(self, lease: client.V1Lease | None, record: LeaseRecord) -> client.V1Lease:
        self.pause("write the lease")
        maybe_crash(self.rng, self.crash_rate, "write the lease")
        written = super()._write(lease, record)
        maybe_crash(self.rng, self.crash_rate, "the lease written, not yet known")
        return written
