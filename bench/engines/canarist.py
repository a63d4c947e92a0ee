"""``canarist``: the product's own engine, plugged into the benchmark here (placeholder until it is wired).

To enter the benchmark this module must define ``make_engine``: a callable ``(truth: Truth) -> Engine``
(see :mod:`bench.engines.base`), returning an object with ``name = "canarist"``, ``reset(policy)`` and
``decide(data) -> Verdict``. It must ignore ``truth`` (only the oracle may know the true distributions):
it gets what a controller gets, the :class:`bench.simulate.IntervalData` of each interval. Until then
``make_engine`` is None and the harness does not list ``canarist`` at all (no results are made up).
"""

from __future__ import annotations

from bench.engines.base import EngineFactory

make_engine: EngineFactory | None = None
