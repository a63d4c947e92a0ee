"""Where traffic goes at each point of a rollout: the step schedule and the route plan.

Pure values only. The templates in ``templates/`` lay these values out as Istio objects; every
number that matters (weights, mirror share, the canary's bucket range in Triton mode) is decided
here, where it is tested by the thousand.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.api.model import ModelRollout, Strategy
from controller.api.routing import RoutingMode

#: Triton mode splits on the first three hex digits of Envoy's x-request-id (a random UUIDv4).
REQUEST_ID_BUCKETS = 16**3
_HEX = "0123456789abcdef"


@dataclass(frozen=True)
class Step:
    """One analysis step: the canary's share of live traffic and of mirrored (shadow) traffic."""

    index: int
    canary_weight: int
    mirror_percent: float = 0.0

    @property
    def is_shadow(self) -> bool:
        return self.canary_weight == 0 and self.mirror_percent > 0


@dataclass(frozen=True)
class RouteState:
    """What the routes should say right now.

    ``cohorts`` turns the A/B and sticky-cookie routes on; a rollback turns them off so that no
    user keeps reaching the canary.
    """

    canary_weight: int
    mirror_percent: float = 0.0
    cohorts: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.canary_weight, int) and 0 <= self.canary_weight <= 100):
            raise ValueError(f"canary weight must be an integer in 0..100, got {self.canary_weight!r}")
        if not 0.0 <= self.mirror_percent <= 100.0:
            raise ValueError(f"mirror percentage must be in 0..100, got {self.mirror_percent!r}")

    @property
    def stable_weight(self) -> int:
        return 100 - self.canary_weight


def step_weights(strategy: Strategy) -> list[int]:
    """The canary weights of the analysed steps; reaching 100 after the last one is promotion."""
    if strategy.step_weight is not None:
        top = strategy.max_weight if strategy.max_weight is not None else 100
        weights = list(range(strategy.step_weight, top + 1, strategy.step_weight))
        if weights[-1] != top:
            weights.append(top)
    else:
        weights = list(strategy.steps) if strategy.steps is not None else [1, 5, 25, 50]
    return [w for w in weights if w < 100]


def schedule(rollout: ModelRollout) -> tuple[Step, ...]:
    """Every analysis step in order: the shadow phase (if any), then the weighted steps."""
    strategy = rollout.spec.strategy
    steps: list[Step] = []
    if strategy.mirror is not None:
        steps += [Step(i, 0, strategy.mirror.percentage) for i in range(strategy.mirror.intervals)]
    steps += [Step(len(steps) + i, w) for i, w in enumerate(step_weights(strategy))]
    return tuple(steps)


def state_for_step(rollout: ModelRollout, index: int) -> RouteState:
    """The route state while step ``index`` is analysed (``len(schedule)`` means promoted)."""
    steps = schedule(rollout)
    if not 0 <= index <= len(steps):
        raise ValueError(
            f"step {index} is out of range: this rollout has steps 0..{len(steps)} ({len(steps)} = promoted)"
        )
    if index == len(steps):
        return RouteState(100)
    step = steps[index]
    return RouteState(step.canary_weight, step.mirror_percent)


def has_cohorts(rollout: ModelRollout) -> bool:
    """Whether requests reach the canary other than by the randomised split (A/B cohorts, sticky users)."""
    return bool(rollout.spec.routing.match) or rollout.spec.routing.sticky is not None


def split_tagged(rollout: ModelRollout) -> bool:
    """Whether Istio's metrics tell the randomised split's requests apart (:data:`SPLIT_TAG`).

    Only then does comparing the canary with stable on Istio's metrics compare like with like: cohort
    and sticky requests are chosen by who sends them, not at random. In TritonVersion mode Istio
    cannot tell the versions apart at all, so there is nothing to tag.
    """
    return has_cohorts(rollout) and rollout.spec.routing.mode is RoutingMode.SUBSET


def request_id_buckets(weight: int) -> int:
    """How many of the 4096 x-request-id prefixes go to the canary for ``weight`` percent."""
    return round(weight * REQUEST_ID_BUCKETS / 100)


def realized_share(rollout: ModelRollout, state: RouteState) -> float:
    """The canary's true expected share of (unmatched) traffic, as the analysis must assume it."""
    if rollout.spec.routing.mode is RoutingMode.TRITON_VERSION:
        return request_id_buckets(state.canary_weight) / REQUEST_ID_BUCKETS
    return state.canary_weight / 100


def request_id_regex(weight: int) -> str:
    """An RE2 pattern that fully matches x-request-id values whose 3-hex-digit prefix is < k.

    Envoy generates x-request-id as a random UUIDv4 at the edge, so its prefix is uniform and a
    route matching this pattern receives ``k/4096`` of the requests: a weighted split that can
    carry its own URI rewrite, which Istio's per-route rewrite cannot do across destinations.
    """
    k = request_id_buckets(weight)
    if not 0 < k < REQUEST_ID_BUCKETS:
        raise ValueError(f"weight {weight} needs no split")
    digits = [(k >> 8) & 0xF, (k >> 4) & 0xF, k & 0xF]
    alternatives = []
    for position, digit in enumerate(digits):
        if digit == 0:
            continue
        prefix = "".join(_HEX[d] for d in digits[:position])
        rest = "[0-9a-f]" * (2 - position)
        alternatives.append(f"{prefix}{_hex_class(digit)}{rest}")
    return "(?:" + "|".join(alternatives) + ").*"


def _hex_class(below: int) -> str:
    """A character class of the hex digits 0 .. below-1."""
    if below == 1:
        return "0"
    if below <= 10:
        return f"[0-{below - 1}]"
    top = _HEX[below - 1]
    return "[0-9a]" if top == "a" else f"[0-9a-{top}]"
