"""The settled windows' values, kept from one look to the next. Pure (state in memory, no I/O).

A window in the past no longer changes once the metrics store holds all its samples: ``settle``
seconds after its end (the scrape interval and the store's ingestion lag). What a look builds for
such a window (each series' value per version, or why it has none) is kept, so the next look asks
Prometheus only for the windows it has not seen settled and builds only those: a look's cost grows
with the new windows, not with the analysis' age. A value is kept only if everything it was built
from was read without doubt (an unanswered, lost or refused query is asked again next look), and a
window is skipped by the next look's plan only once every series of its rollout was kept for it
(so an observation built from kept values is the one a full re-read builds:
``tests/test_prometheus.py`` checks it bit for bit).

Entries are keyed by the rollout's *signature*: its key and everything its queries ask for, so an
edited metric (another selector, another kind) is read afresh. After a restart the cache is empty
and the first look reads every window again.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from controller.metrics.samples import Window
from controller.metrics.selectors import to_millis

#: Most (rollout, window) entries kept, the least recently used dropped first (at the start of a
#: look, never during one): two hours of one-minute windows for 4,000 rollouts. An entry is about
#: 1.4 KiB for three metrics (measured with tracemalloc on bench.scale's policy: see the README); a
#: working set larger than the cap is read again from the store, never read wrong.
MAX_WINDOWS = 480_000
#: Most rollout signatures and shared mapping keys remembered: past either, that table starts afresh
#: (ids are never reused: an entry of a forgotten signature is never read again, and goes by LRU).
MAX_SIGNATURES = 100_000
MAX_INTERNED = 100_000
WindowKey = tuple[int, int, int]  # (signature id, window end ms, window length ms)
Slot = tuple[str, str]  # (series tag, version side)


class _Packed:
    """A mapping value kept as its keys (one tuple shared by the windows that have the same) and its values."""

    __slots__ = ("keys", "values")

    def __init__(self, keys: tuple[Hashable, ...], values: tuple[Any, ...]) -> None:
        self.keys, self.values = keys, values


@dataclass
class _Entry:
    values: dict[Slot, Any] = field(default_factory=dict)
    complete: bool = False


@dataclass
class WindowCache:
    """Settled windows' built values, by rollout signature and window; at most ``max_windows`` entries."""

    settle: float = 60.0
    max_windows: int = MAX_WINDOWS
    max_signatures: int = MAX_SIGNATURES
    max_interned: int = MAX_INTERNED
    entries: OrderedDict[WindowKey, _Entry] = field(default_factory=OrderedDict)
    hits: int = 0  # values a look took from here instead of the answers (counted by the builder)
    _signatures: dict[Hashable, int] = field(default_factory=dict)
    _interned: dict[Hashable, Any] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def signature(self, identity: Hashable) -> int:
        """A small id for a rollout's identity (its key and what its queries ask), the same while it is unchanged."""
        found = self._signatures.get(identity)
        if found is None:
            if len(self._signatures) >= self.max_signatures:  # every release of every rollout seen: start afresh
                self._signatures.clear()
            found = self._signatures[identity] = next(self._ids)
        return found

    def settled(self, window: Window, at: float) -> bool:
        return window.end <= at - self.settle

    def kept(self, signature: int, window: Window) -> dict[Slot, Any] | None:
        """Every value kept for one window of the rollout, by slot (each as kept: see :func:`unpacked`);
        None when none is. A look takes each covered window's values once, not once a series."""
        entry = self.entries.get(_key(signature, window))
        return entry.values if entry is not None else None

    def put(self, signature: int, window: Window, slot: Slot, value: Any) -> None:
        """Keep a value built without doubt for a window settled as of the look (the caller checks both)."""
        key = _key(signature, window)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = _Entry()
        entry.values[self._intern(slot)] = self._packed(value)

    def complete(self, signature: int, window: Window, done: bool) -> None:
        """Whether every series of the rollout is kept for ``window``: then the next look need not ask for it."""
        entry = self.entries.get(_key(signature, window))
        if entry is not None:
            entry.complete = done

    def covers(self, signature: int, window: Window) -> bool:
        """Whether ``window`` is complete for the rollout: nothing to ask Prometheus for. Marks it recently used."""
        key = _key(signature, window)
        entry = self.entries.get(key)
        if entry is None or not entry.complete:
            return False
        self.entries.move_to_end(key)  # recently used: the last to go
        return True

    def trim(self) -> None:
        """Drop the least recently used entries beyond ``max_windows``: called before a look is planned,
        so a window the plan skips (covered) is never dropped before the look is built."""
        while len(self.entries) > self.max_windows:
            self.entries.popitem(last=False)

    def _intern(self, value: Any) -> Any:
        """One shared copy of equal keys (a histogram's bounds in every window); bounded, as it is only a saving."""
        if len(self._interned) >= self.max_interned:
            self._interned.clear()
        return self._interned.setdefault(value, value)

    def _packed(self, value: Any) -> Any:
        """A (mapping, notes) value with its mapping packed; anything else as it is."""
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], dict):
            mapping, notes = value
            return _Packed(self._intern(tuple(mapping)), tuple(mapping.values())), notes
        return value


def unpacked(value: Any) -> Any:
    """A kept value as it was put (a packed mapping a dict again)."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], _Packed):
        packed, notes = value
        return dict(zip(packed.keys, packed.values, strict=True)), notes
    return value


def _key(signature: int, window: Window) -> WindowKey:
    end = to_millis(window.end)
    return signature, end, end - to_millis(window.start)
