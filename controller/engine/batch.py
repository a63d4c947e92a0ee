"""Many rollouts' looks taken as one: the MetricsSource a controller pass hands to each reconcile.

A pass knows, before it reconciles anything, which rollouts will look at their metrics and at which
windows (:func:`controller.engine.reconcile.planned_look`). :class:`BatchedLooks` takes all those
looks in one call of the real source (one query per metric family for every rollout, as the catalog
allows) and answers each reconcile from it; a reconcile that asks for anything else (a window the
clock added meanwhile) is asked of the real source as before. A failed batch is each rollout's
failure, at once, instead of one timeout per rollout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controller.api.model import ModelRollout
from controller.engine.ports import EdgeFailure, MetricsSource
from controller.metrics.samples import Observation, Window


@dataclass
class BatchedLooks:
    """A MetricsSource answering from one look taken for many rollouts (:meth:`take`), else from ``source``."""

    source: MetricsSource
    taken: dict[str, tuple[tuple[Window, ...], Observation]] = field(default_factory=dict)
    failure: EdgeFailure | None = None
    batches: int = 0

    def take(self, wanted: Mapping[str, tuple[ModelRollout, Sequence[Window]]], at: float) -> None:
        """One look for every rollout in ``wanted`` (key -> rollout and windows), kept for their reconciles."""
        if not wanted:
            return
        windows = {key: tuple(w) for key, (_, w) in wanted.items()}
        observations, self.failure = self.source.observe([r for r, _ in wanted.values()], windows, at)
        self.taken = {key: (windows[key], observations[key]) for key in wanted if key in observations}
        self.batches += 1

    def observe(
        self, rollouts: Sequence[ModelRollout], windows: Mapping[str, Sequence[Window]], at: float
    ) -> tuple[dict[str, Observation], EdgeFailure | None]:
        if rollouts and all(
            r.key in self.taken and self.taken[r.key][0] == tuple(windows.get(r.key, ())) for r in rollouts
        ):
            return {r.key: self.taken.pop(r.key)[1] for r in rollouts}, self.failure
        return self.source.observe(rollouts, windows, at)
