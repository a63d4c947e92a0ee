"""The engines under benchmark, by name, with the options that tune them."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from bench.engines import canarist, flagger, kayenta, naive, oracle
from bench.engines.base import BenchPolicy, Engine, EngineFactory, Verdict
from bench.simulate import Truth

__all__ = ["BenchPolicy", "Engine", "EngineFactory", "Verdict", "engine_factories", "make_engine"]

ORACLE = "oracle-sprt"
#: The same SPRT with H0 at the policy's margin boundary: the limit for a margin-aware engine.
ORACLE_MARGIN = "oracle-sprt-margin"


def engine_factories(
    flagger_threshold: int = 5, kayenta_min_points: int = 2, canarist_hold: str = canarist.HOLD_ON_SUSPICION
) -> Mapping[str, EngineFactory]:
    """Every available engine's factory, in report order (the oracles last)."""
    factories: dict[str, EngineFactory] = {}
    factories["canarist"] = partial(canarist.make_engine, hold_on_suspicion=canarist_hold)
    factories["flagger"] = partial(flagger.make_engine, threshold=flagger_threshold)
    factories["kayenta"] = lambda truth: kayenta.KayentaEngine(min_points=kayenta_min_points)
    factories["naive-mwu"] = naive.make_naive
    factories["fixed"] = naive.make_fixed
    factories[ORACLE] = oracle.make_engine
    factories[ORACLE_MARGIN] = oracle.make_margin_engine
    return factories


def make_engine(name: str, truth: Truth, **options: Any) -> Engine:
    """Build one engine by name; an unknown name raises (no silent fallback)."""
    factories = engine_factories(**options)
    if name not in factories:
        raise KeyError(f"unknown engine {name!r}; available: {', '.join(factories)}")
    return factories[name](truth)
