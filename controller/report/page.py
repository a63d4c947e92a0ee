"""``canarist report``: one rollout as an HTML page with PNG plots, from its spec and stored status.

The status the in-cluster controller writes is enough: the decision log (``history``), the weight
in force over time (``weights``), every look's numbers (``looks``) and the latency buckets at
each decision (``distributions``). Any of these may be missing in an older status: a plot without
its data is skipped with a note on the page, never a crash. :mod:`controller.report.series` turns
the status into plot-ready series (pure) and :mod:`controller.report.drawing` draws them; this
module reads the input, writes the page and its images. Every string taken from the object is
escaped: reasons and messages carry user text.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from html import escape
from pathlib import Path
from typing import Any

from controller.api.load import PolicyError, from_object, parse_yaml
from controller.api.model import KIND, ModelRollout
from controller.api.schedule import schedule
from controller.api.status import MetricStatus, Requests, RolloutStatus
from controller.api.text import escaped, printable
from controller.api.times import timestamp
from controller.engine.record import E_VALUE_CAP
from controller.report import drawing, series
from controller.report.series import Scale, estimate_scale, interval_of, metric_of, number, timed

MAX_INPUT_BYTES = 16 * 1024 * 1024
#: YAML costs far more memory per byte than JSON while it is composed; an object is at most
#: 1.5 MiB in etcd, so its ``kubectl get -o yaml`` fits well within this.
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 1_000_000


class ReportError(ValueError):
    """The input cannot be reported on, or the report cannot be written: one line for the user."""


@dataclass(frozen=True)
class Report:
    """What :func:`build_report` wrote: the page, its images, and the plots it skipped (and why)."""

    index: Path
    images: tuple[Path, ...]
    notes: tuple[str, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.index, *self.images)


# --- the input --------------------------------------------------------------------------------


def read_object(path: Path) -> dict[str, Any]:
    """A ModelRollout from a file: ``kubectl get -o json|yaml`` output (a one-item List too)."""
    try:
        if path.stat().st_size > MAX_INPUT_BYTES:
            raise ReportError(f"{path}: larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise ReportError(f"{path}: JSON nested too deeply") from None
    except ValueError:
        doc = _yaml_object(text, str(path))
    return rollout_object(doc, str(path))


def _yaml_object(text: str, source: str) -> Any:
    """One YAML document, read by the policy loader's parser: aliases refused, never expanded."""
    try:
        documents = parse_yaml(text, source, max_bytes=MAX_YAML_BYTES, max_nodes=MAX_YAML_NODES)
    except PolicyError as exc:
        raise ReportError(f"{exc.diagnostics[0]} (neither JSON nor YAML that canarist reads)") from None
    if len(documents) != 1:
        raise ReportError(f"{escaped(source, 300)}: {len(documents)} YAML documents: give exactly one ModelRollout")
    return documents[0].data


def rollout_object(doc: Any, source: str = "input") -> dict[str, Any]:
    """The document as a ModelRollout with a status, or a ReportError saying what it is instead."""
    source = escaped(source, 300)  # a file name or an object's name: user text in a terminal line
    if isinstance(doc, Mapping) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        if len(doc["items"]) != 1:
            raise ReportError(f"{source}: a List of {len(doc['items'])} objects: give exactly one ModelRollout")
        doc = doc["items"][0]
    if not isinstance(doc, Mapping) or not isinstance(doc.get("spec"), Mapping):
        raise ReportError(f"{source}: not a ModelRollout (no spec)")
    if doc.get("kind", KIND) != KIND:
        raise ReportError(f"{source}: not a ModelRollout but a {escaped(str(doc.get('kind')), 100)}")
    if not isinstance(doc.get("status"), Mapping) or not doc["status"]:
        raise ReportError(f"{source}: the rollout has no status yet (the controller has not reconciled it)")
    return dict(doc)


# --- the report -------------------------------------------------------------------------------


def build_report(obj: Mapping[str, Any], out: Path) -> Report:
    """Write ``out/index.html`` and its PNGs for a ModelRollout object as stored in the cluster."""
    metadata = _mapping(_mapping(obj).get("metadata"))
    key = f"{metadata.get('namespace', 'default')}/{metadata.get('name', '(unnamed)')}"
    obj = rollout_object(obj, f"modelrollout {key}")
    status, spec = RolloutStatus.read(obj["status"]), obj["spec"]
    rollout, problem = from_object(obj)  # the spec judged as the controller judges it
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{out}: cannot create the report directory: {exc.strerror or exc}") from None
    t0 = series.origin(status)
    base = t0 if t0 is not None else 0.0
    label = f"minutes since {timestamp(base)}"
    weights = series.weight_series(status, rollout, base) if t0 is not None else None
    marks = weights.marks if weights is not None else ()
    cdfs = series.latency_cdfs(status, rollout, base)
    outputs = series.output_shares(status, base)
    evidence = series.evidence_paths(status, rollout, base)
    estimates = series.estimate_paths(status, rollout, base)
    wanted: list[tuple[str, str, Callable[[Path], None] | None, str]] = [
        ("weights.png", "Canary weight",
         partial(drawing.draw_weights, weights, time_label=label, title=key) if weights else None,
         "no weights log, and no decision whose weight the policy tells"),
        ("latency.png", "Latency distributions", partial(drawing.draw_latency, cdfs, title=key) if cdfs else None,
         "no latency bucket counts recorded at a decision (no latency metric, no decision yet, or an older status)"),
        ("evidence.png", "Evidence",
         partial(drawing.draw_evidence, evidence, marks, time_label=label, title=key) if evidence else None,
         "no look with evidence recorded"),
        ("estimates.png", "Estimated effects",
         partial(drawing.draw_estimates, estimates, marks, time_label=label, title=key) if estimates else None,
         "no look with an estimate recorded"),
    ]  # fmt: skip
    if outputs or (rollout is not None and any(m.outputs is not None for m in rollout.spec.analysis.metrics)):
        wanted.insert(2, (
            "outputs.png", "Output distributions",
            partial(drawing.draw_outputs, outputs, title=key) if outputs else None,
            "no prediction distribution recorded at a decision yet",
        ))  # fmt: skip
    figures, images, notes = [], [], []
    for name, heading, draw, missing in wanted:
        why = _draw(out / name, draw) if draw else missing
        if why is None:
            images.append(out / name)
        else:
            notes.append(f"{name} skipped: {why}")
            with contextlib.suppress(OSError):  # no older report's plot left beside this page
                (out / name).unlink(missing_ok=True)
        figures.append((heading, name if why is None else None, why or ""))
    if rollout is None:
        notes.append(f"the spec does not validate ({problem}): margins, SLOs and replayed weights are left out")
    index = out / "index.html"
    page = render_html(key, status, spec, rollout, figures=figures, notes=notes, t0=base)
    try:
        index.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{index}: cannot write: {exc.strerror or exc}") from None
    return Report(index, tuple(images), tuple(notes))


def _draw(path: Path, draw: Callable[[Path], None]) -> str | None:
    """Draw one plot; None, or why it is missing (matplotlib could not lay the numbers out)."""
    try:
        draw(path)
    except OSError as exc:
        raise ReportError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except Exception as exc:  # a plot that fails is a note on the page, not a lost report
        return f"could not be drawn: {type(exc).__name__}: {exc}"
    return None


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd}
.Succeeded,.Pass{color:#176f2c;font-weight:bold}.Failed,.Fail,.Rollback{color:#b00020;font-weight:bold}
.Paused,.Inconclusive,.NoData,.Pause{color:#9a6700}.note{color:#666;font-style:italic}code{background:#f3f3f3}
.wide{overflow-x:auto;max-width:100%}td{overflow-wrap:anywhere}h1{overflow-wrap:anywhere}pre{overflow-x:auto}
@media (max-width:600px){body{margin:1em auto;padding:0 .5em}table{font-size:.8em}}
@media print{body{max-width:none;margin:0}.wide{overflow:visible}img,table,tr{break-inside:avoid}
h2{break-after:avoid}}"""
LEGEND = (
    "Estimates: a latency quantile as its relative change (canary / stable - 1); a rate as canary - stable in "
    "percentage points (pp), with its anytime-valid interval. A metric decides when an e-value reaches its "
    "threshold: regression evidence rolls back, non-inferiority evidence passes."
)
CLASSES = {"Succeeded", "Failed", "Paused", "Pass", "Fail", "Inconclusive", "NoData", "Rollback", "Pause"}


def render_html(
    key: str,
    status: RolloutStatus,
    spec: Mapping[str, Any],
    rollout: ModelRollout | None,
    *,
    figures: list[tuple[str, str | None, str]],
    notes: list[str],
    t0: float,
) -> str:
    """The page: outcome, latest metrics, plots (or why not), the decision log and the policy."""
    phase = status.phase.value if status.phase is not None else "Pending"
    last = status.last_analysis_at
    outcome = [
        ("Phase", _span(phase)),
        ("Message", _esc(status.message or "")),
        ("Step", _esc(status.current_step if status.current_step is not None else "-")),
        ("Canary weight", _esc(f"{status.canary_weight}%" if status.canary_weight is not None else "-")),
        ("Versions", _esc(f"{_get(spec, 'stable', 'name')} (stable) → {_get(spec, 'canary', 'name')} (canary)")),
        ("Started", _esc(timestamp(t0) if t0 else "-")),
        ("Last analysis", _esc(timestamp(last) if last is not None else "never")),
        ("Canary revision", _esc(status.canary_revision if status.canary_revision is not None else "-")),
    ]
    metric_rows = [_metric_row(m, estimate_scale(metric_of(rollout, m.name))) for m in status.metrics]
    history = [
        [_esc(timestamp(at)), _esc(f"{(at - t0) / 60:.1f}"), _esc(f"{e.from_phase.value} / step {e.from_step}"),
         _esc(f"{e.to_phase.value} / step {e.to_step}"), _span(e.action.value), _esc(e.reason)]
        for at, e in timed(status.history)
    ]  # fmt: skip
    body = [f"<h1>ModelRollout {_esc(key)}</h1>", "<h2>Outcome</h2>", _pairs(outcome)]
    body += [f'<p class="note">{_esc(n)}</p>' for n in notes]
    body += ["<h2>Latest metrics</h2>", f'<p class="note">{_esc(LEGEND)}</p>']
    headers = ["Metric", "Verdict", "Estimate", "Interval", "e-value (regression)", "e-value (non-inferiority)",
               "Threshold", "Requests stable", "Requests canary", "Reason"]  # fmt: skip
    body += [_table(headers, metric_rows) if metric_rows else '<p class="note">No metric recorded yet.</p>']
    for heading, name, why in figures:
        body.append(f"<h2>{_esc(heading)}</h2>")
        if name is None:
            body.append(f'<p class="note">Not drawn: {_esc(why)}.</p>')
        else:
            body.append(f'<img src="{_esc(name)}" alt="{_esc(heading)}">')
    body += ["<h2>Decision log</h2>"]
    log_headers = ["Time", "Minute", "From", "To", "Action", "Reason"]
    body += [_table(log_headers, history) if history else '<p class="note">No decision recorded.</p>']
    body += ["<h2>Policy</h2>", _policy(spec, rollout)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>canarist report: {_esc(key)}</title>"
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _metric_row(m: MetricStatus, scale: Scale) -> list[str]:
    estimate, (lo, hi) = number(m.estimate), interval_of(m.interval)
    requests = m.requests if m.requests is not None else Requests()
    threshold = number(m.threshold)
    verdict = m.verdict.value if m.verdict is not None else ""
    return [
        _esc(m.name or ""),
        _span(verdict + (" (SLO breached)" if m.slo_breached is True else ""), verdict),
        _esc(f"{estimate * scale.factor:+.3g} {scale.unit}" if estimate is not None else "-"),
        _esc(f"[{lo * scale.factor:+.3g}, {hi * scale.factor:+.3g}] {scale.unit}" if math.isfinite(lo) else "-"),
        _esc(_g(m.e_value)),
        _esc(_g(m.e_value_non_inferiority)),
        _esc(_g(threshold) if threshold is not None and threshold < E_VALUE_CAP else "-"),
        _esc(requests.stable if requests.stable is not None else "-"),
        _esc(requests.canary if requests.canary is not None else "-"),
        _esc(m.reason or ""),
    ]


def _policy(spec: Mapping[str, Any], rollout: ModelRollout | None) -> str:
    strategy = _mapping(spec.get("strategy"))
    if rollout is not None:
        shown = [f"{s.canary_weight}%" if not s.is_shadow else f"shadow ({s.mirror_percent:g}% mirrored)"
                 for s in schedule(rollout)]  # fmt: skip
        steps = ", ".join([*shown, "then 100% (promoted)"])
    else:
        steps = _raw(strategy.get("steps"))
    pairs = [
        ("Service", _esc(f"{_get(spec, 'service', 'name')}:{_get(spec, 'service', 'port')}")),
        ("Steps (canary weight)", _esc(steps)),
        ("Interval", _esc(_raw(strategy.get("interval", "1m")))),
        ("Minimum canary requests per step", _esc(_raw(strategy.get("minRequests", 100)))),
        ("Progress deadline", _esc(_raw(strategy.get("progressDeadline", "30m")))),
        ("On no data / inconclusive",
         _esc(f"{strategy.get('onNoData', 'Pause')} / {strategy.get('onInconclusive', 'Pause')}")),
        ("Alpha (false rollback budget)", _esc(_raw(_get(spec, "analysis", "alpha") or 0.05))),
    ]  # fmt: skip
    raw = _get(spec, "analysis", "metrics")
    metrics = [m for m in raw if isinstance(m, Mapping)] if isinstance(raw, list) else []
    rows = [
        [_esc(_raw(m.get(f, default))) for f, default in
         (("name", None), ("kind", None), ("weight", 1), ("quantile", None), ("slo", None), ("margin", None))]
        for m in metrics
    ]  # fmt: skip
    return _pairs(pairs) + _table(["Metric", "Kind", "Weight", "Quantile", "SLO", "Margin"], rows)


def _pairs(pairs: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A table of already escaped cells."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    return (  # in a box that scrolls on its own, so a narrow screen never scrolls the whole page sideways
        f'<div class="wide"><table><tr>{head}</tr>'
        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        + "</table></div>"
    )


def _span(text: str, kind: str | None = None) -> str:
    css = kind if kind is not None else text
    return f'<span class="{css}">{_esc(text)}</span>' if css in CLASSES else _esc(text)


def _esc(value: Any) -> str:
    """User text as HTML: no control character, bidi override or escape sequence, bounded, escaped."""
    return escape(printable("" if value is None else str(value), 2048), quote=True)


def _raw(value: Any) -> str:
    """A policy value as text: ``max 250ms`` for a mapping, ``-`` for nothing."""
    if value is None:
        return "-"
    if isinstance(value, Mapping):
        return "; ".join(f"{k} {_raw(v)}" for k, v in value.items())
    return json.dumps(value, default=str) if isinstance(value, list) else str(value)


def _g(value: float | None) -> str:
    x = number(value)
    return f"{x:.3g}" if x is not None else "-"


def _get(spec: Mapping[str, Any], section: str, key: str) -> Any:
    return _mapping(spec.get(section)).get(key)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
