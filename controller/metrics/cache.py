"""The cells of settled windows, kept from one look to the next. Pure (state in memory, no I/O).

A window in the past no longer changes once the metrics store holds all its samples: ``settle``
seconds after its end (the scrape interval and the store's ingestion lag). A look then asks only
for the windows it has not seen settled, and reads the others from here: a look fetches what is new,
not every window since the analysis began. A cell is a family's rows for one version in one window
exactly as :class:`~controller.metrics.read.Reader` found them, so an observation built from
cached cells is the one a full re-read builds (``tests/test_prometheus.py`` checks it bit for bit).
Only cells read without doubt are kept (an unanswered or lost query is asked again next look).
After a restart the cache is empty and the first look reads every window again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from controller.metrics.catalog import Ask
from controller.metrics.read import CANARY, STABLE, Cell
from controller.metrics.samples import Window
from controller.metrics.selectors import to_millis

#: Most cells kept, the least recently used dropped first (at the start of a look, never during one).
#: A latency cell holds its bucket rows (about 10 KB): 50,000 cells stay within a few hundred MiB;
#: a working set larger than that is read again from the store, never read wrong.
MAX_CELLS = 50_000
CellKey = tuple[Ask, str, int, int]  # (ask, side, window end ms, window length ms)


def _key(ask: Ask, side: str, window: Window) -> CellKey:
    end = to_millis(window.end)
    return ask, side, end, end - to_millis(window.start)


@dataclass
class CellCache:
    """Settled windows' cells, by ask, version and window; at most ``max_cells``, the oldest dropped first."""

    settle: float = 60.0
    max_cells: int = MAX_CELLS
    cells: OrderedDict[CellKey, Cell] = field(default_factory=OrderedDict)
    hits: int = 0

    def get(self, ask: Ask, side: str, window: Window) -> Cell | None:
        key = _key(ask, side, window)
        found = self.cells.get(key)
        if found is not None:
            self.hits += 1
            self.cells.move_to_end(key)  # recently used: the last to go
        return found

    def put(self, ask: Ask, side: str, window: Window, cell: Cell, at: float) -> None:
        """Keep ``cell`` if its window had settled at ``at`` (the look's time)."""
        if window.end > at - self.settle:
            return
        self.cells[_key(ask, side, window)] = cell

    def trim(self) -> None:
        """Drop the least recently used cells beyond ``max_cells``: called before a look is planned, so a
        cell the plan relies on (its window not asked for) is never dropped before the look is built."""
        while len(self.cells) > self.max_cells:
            self.cells.popitem(last=False)

    def covers(self, ask: Ask, window: Window) -> bool:
        """Whether both versions' cells of ``ask`` in ``window`` are kept: nothing to ask for."""
        return all(_key(ask, side, window) in self.cells for side in (STABLE, CANARY))
