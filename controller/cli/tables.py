"""Rollouts and their evidence as terminal text: one metric table for `status` and `analyze`.

Every cell may be user data (anyone who can edit a rollout can write its status; metric names and
reasons come from policies), so each is made printable and bounded, and a value of the wrong type
is shown, not a crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controller.api.text import printable

#: Bounds on what one cell prints (a reason may be long; a name never is).
CELL_LIMIT, MESSAGE_LIMIT = 64, 512
METRIC_HEADER = ("METRIC", "VERDICT", "E-VALUE", "THRESHOLD", "PROOF", "CANARY N", "WHY")


def metric_rows(metrics: Iterable[object]) -> list[tuple[str, ...]]:
    """One row per metric of a status (or of ``analyze``'s document), under :data:`METRIC_HEADER`."""
    rows: list[tuple[str, ...]] = [METRIC_HEADER]
    for m in (_mapping(item) for item in metrics):
        rows.append(
            (
                _cell(m.get("name", "")),
                _cell(m.get("verdict", "")) + (" (SLO)" if m.get("sloBreached") is True else ""),
                _number(m.get("eValue", 0)),
                _number(m.get("threshold", 0)),
                _number(m.get("eValueNonInferiority", 0)),
                _cell(_mapping(m.get("requests")).get("canary", "")),
                _cell(m.get("reason", ""), MESSAGE_LIMIT),
            )
        )
    return rows


def analysis_table(doc: Mapping[str, Any]) -> str:
    """``canarist analyze``'s document as a terminal table: one row per metric, then the decision and why."""
    requests = _mapping(doc.get("requests"))
    rollout, step, weight = (
        _cell(doc.get("rollout"), MESSAGE_LIMIT),
        _cell(doc.get("step")),
        _cell(doc.get("canaryWeight")),
    )
    head = (
        f"{rollout}  step {step} (canary {weight}%)  "
        f"{_cell(doc.get('windows'))} windows to {_cell(doc.get('at'))}  requests stable "
        f"{_cell(requests.get('stable'))}, canary {_cell(requests.get('canary'))}"
    )
    lines = [head, "", *columns(metric_rows(_items(doc.get("metrics"))))]
    lines += ["", f"decision: {_cell(doc.get('decision')).upper()}: {_cell(doc.get('reason'), MESSAGE_LIMIT)}"]
    error = _mapping(doc.get("prometheus")).get("error")
    if error:
        lines.append(f"prometheus: {_cell(error, MESSAGE_LIMIT)}")
    return "\n".join(lines)


def rollouts_table(objects: list[dict[str, Any]], *, detailed: bool) -> str:
    """Rollouts as text: one line each, and for a single rollout its evidence and decisions.

    Every cell is user data (anyone who can edit a rollout can write its status), so each one is
    made printable: no control character, no terminal escape, no bidi override, bounded length;
    and a value of the wrong type is shown, not a crash.
    """
    rows = [("NAMESPACE", "NAME", "PHASE", "STEP", "WEIGHT", "MESSAGE")]
    for obj in objects:
        metadata, st = _mapping(obj.get("metadata")), _mapping(obj.get("status"))
        rows.append(
            (
                _cell(metadata.get("namespace", "")),
                _cell(metadata.get("name", "")),
                _cell(st.get("phase", "Pending")),
                _cell(st.get("currentStep", "-")),
                _cell(f"{st['canaryWeight']}%" if "canaryWeight" in st else "-"),
                _cell(st.get("message", ""), MESSAGE_LIMIT),
            )
        )
    lines = columns(rows)
    if detailed and objects:
        st = _mapping(objects[0].get("status"))
        lines += ["", "evidence at the last analysis (" + _cell(st.get("lastAnalysisAt", "never")) + "):"]
        lines += columns(metric_rows(_items(st.get("metrics"))))
        lines += ["", "decisions:"]
        for t in (_mapping(item) for item in _items(st.get("history"))[-10:]):
            moved = f"{_cell(t.get('fromPhase'))}/{_cell(t.get('fromStep'))}"
            moved += f" -> {_cell(t.get('toPhase'))}/{_cell(t.get('toStep'))}"
            lines.append(
                f"  {_cell(t.get('at'))}  {moved}  {_cell(t.get('action'))}: {_cell(t.get('reason'), MESSAGE_LIMIT)}"
            )
    return "\n".join(lines)


def _cell(value: object, limit: int = CELL_LIMIT) -> str:
    return printable(value if isinstance(value, str) else str(value), limit)


def _number(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.3g}"
    return _cell(value)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
