"""Which bucket bounds of a fine histogram the tests read. Pure.

Dropping bounds from a cumulative histogram gives the exact histogram on the bounds left, so a
test on fewer bounds stays valid (it loses resolution, not validity); the latency tests' cost grows
with the square of the bounds, so a histogram of thousands of buckets is read on at most
:data:`MAX_HISTOGRAM_EDGES`, chosen from the bounds alone (never from the counts).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence

#: Most bucket bounds (+Inf included) a latency histogram is analysed on; finer ones are coarsened.
#: Istio's default histogram has 20; the latency tests' cost grows with the square of the bounds.
MAX_HISTOGRAM_EDGES = 64


def coarsen(edges: Sequence[float], keep: Iterable[float] = (), cap: int = MAX_HISTOGRAM_EDGES) -> tuple[float, ...]:
    """At most ``cap`` of the sorted bucket bounds ``edges`` (the last one +Inf), chosen from the bounds alone.

    Kept: +Inf, the bounds on either side of each ``keep`` value (the SLO bound: its breach and
    compliance edges stay exact; in order, while they fit), then bounds evenly spaced by index, the
    first and last finite ones included. Dropping bounds from a cumulative histogram gives the exact
    histogram on the bounds left, so every test stays valid (it loses resolution, not validity); the
    choice never looks at the counts. Caps the latency tests' cost, which grows with the square of
    the bounds.
    """
    if cap < 3:
        raise ValueError(f"cap must be at least 3 bucket bounds, got {cap}")
    if len(edges) <= cap:
        return tuple(edges)
    finite = list(edges[:-1])
    must: set[int] = set()
    for value in keep:
        pair = {i for i in (bisect_left(finite, value), bisect_right(finite, value) - 1) if 0 <= i < len(finite)}
        if len(must | pair) <= cap - 1:  # in the order given, while there is room
            must |= pair
    slots = cap - 1 - len(must)
    spread = {round(k * (len(finite) - 1) / (slots - 1)) for k in range(slots)} if slots > 1 else set()
    return (*(finite[i] for i in sorted(must | spread)), edges[-1])
