"""The pre-traffic gate of one rollout: observe through a :class:`~controller.engine.ports.GateProbe`, then judge.

The controller runs it before the first step (and after a new canary revision); ``canarist gate``
runs the same once from a shell.
"""

from __future__ import annotations

from controller.api.model import ModelRollout
from controller.engine.ports import GateProbe
from controller.judge.gate import GateVerdict, judge_triton, target_of


def run_gate(rollout: ModelRollout, probe: GateProbe, url: str | None = None) -> GateVerdict | None:
    """The verdict of ``rollout``'s gate (with ``url`` for the canary's Triton), or None when it has none."""
    target = target_of(rollout, url)
    if target is None or rollout.spec.gate is None:
        return None
    golden = rollout.spec.gate.triton.golden_requests
    return judge_triton(probe.observe(target, golden), golden)
