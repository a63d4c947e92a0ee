"""Rollouts and their evidence as terminal text: one metric table for `status` and `analyze`.

Every cell may be user data (anyone who can edit a rollout can write its status; metric names and
reasons come from policies), so each is made printable and bounded, and a value of the wrong type
is shown, not a crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controller.api.status import MetricStatus, RolloutStatus, read_metrics
from controller.api.text import printable
from controller.api.times import timestamp

#: Bounds on what one cell prints (a reason may be long; a name never is).
CELL_LIMIT, MESSAGE_LIMIT = 64, 512
METRIC_HEADER = ("METRIC", "VERDICT", "E-VALUE", "THRESHOLD", "PROOF", "CANARY N", "WHY")


def metric_rows(metrics: Iterable[MetricStatus]) -> list[tuple[str, ...]]:
    """One row per metric of a status (or of ``analyze``'s document), under :data:`METRIC_HEADER`."""
    rows: list[tuple[str, ...]] = [METRIC_HEADER]
    for m in metrics:
        verdict = m.verdict.value if m.verdict is not None else ""
        rows.append(
            (
                _cell(m.name or ""),
                _cell(verdict) + (" (SLO)" if m.slo_breached is True else ""),
                _number(m.e_value),
                _number(m.threshold),
                _number(m.e_value_non_inferiority),
                _cell(_or(m.requests.canary if m.requests is not None else None, "")),
                _cell(m.reason or "", MESSAGE_LIMIT),
            )
        )
    return rows


def analysis_table(doc: Mapping[str, Any]) -> str:
    """``canarist analyze``'s document as a terminal table: one row per metric, then the decision and why."""
    requests = doc["requests"]
    rollout, step, weight = (
        _cell(doc["rollout"], MESSAGE_LIMIT),
        _cell(doc["step"]),
        _cell(doc["canaryWeight"]),
    )
    head = (
        f"{rollout}  step {step} (canary {weight}%)  "
        f"{_cell(doc['windows'])} windows to {_cell(doc['at'])}  requests stable "
        f"{_cell(requests['stable'])}, canary {_cell(requests['canary'])}"
    )
    lines = [head, "", *columns(metric_rows(read_metrics(doc["metrics"])))]
    lines += ["", f"decision: {_cell(doc['decision']).upper()}: {_cell(doc['reason'], MESSAGE_LIMIT)}"]
    error = doc["prometheus"]["error"]
    if error:
        lines.append(f"prometheus: {_cell(error, MESSAGE_LIMIT)}")
    return "\n".join(lines)


def rollouts_table(objects: list[dict[str, Any]], *, detailed: bool) -> str:
    """Rollouts as text: one line each, and for a single rollout its evidence and decisions.

    Every cell is user data (anyone who can edit a rollout can write its status), so each one is
    made printable: no control character, no terminal escape, no bidi override, bounded length;
    the status is read as the controller reads it (:meth:`RolloutStatus.read`), so a value of the
    wrong type is left out, not a crash.
    """
    rows = [("NAMESPACE", "NAME", "PHASE", "STEP", "WEIGHT", "MESSAGE")]
    for obj in objects:
        metadata = obj.get("metadata")
        metadata = metadata if isinstance(metadata, Mapping) else {}
        st = RolloutStatus.read(obj.get("status"))
        rows.append(
            (
                _cell(metadata.get("namespace", "")),
                _cell(metadata.get("name", "")),
                _cell(st.phase.value if st.phase is not None else "Pending"),
                _cell(_or(st.current_step, "-")),
                _cell(f"{st.canary_weight}%" if st.canary_weight is not None else "-"),
                _cell(st.message or "", MESSAGE_LIMIT),
            )
        )
    lines = columns(rows)
    if detailed and objects:
        st = RolloutStatus.read(objects[0].get("status"))
        lines += ["", "evidence at the last analysis (" + _cell(_time(st.last_analysis_at, "never")) + "):"]
        lines += columns(metric_rows(st.metrics))
        lines += ["", "decisions:"]
        for t in st.history[-10:]:
            moved = f"{t.from_phase.value}/{t.from_step} -> {t.to_phase.value}/{t.to_step}"
            lines.append(f"  {_cell(_time(t.at, '-'))}  {moved}  {t.action.value}: {_cell(t.reason, MESSAGE_LIMIT)}")
    return "\n".join(lines)


def _cell(value: object, limit: int = CELL_LIMIT) -> str:
    return printable(value if isinstance(value, str) else str(value), limit)


def _number(value: float | None) -> str:
    return f"{value:.3g}" if value is not None else "-"


def _or(value: object, missing: str) -> object:
    return value if value is not None else missing


def _time(seconds: float | None, missing: str) -> str:
    return timestamp(seconds) if seconds is not None else missing


def columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
