"""Render the Istio DestinationRule and VirtualService for a rollout at a given route state.

The templates in ``templates/`` decide the layout; this module hands them plain, pre-decided
values and a ``q`` filter that emits each value as flow-style YAML in plain ASCII (JSON-like, any
other character escaped), so no user string is ever spliced into YAML as text. The output is
parsed back into objects, checked against the invariants, and returned in make-before-break
order: DestinationRule first.
"""

from __future__ import annotations

import math
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from controller.api.model import ModelRollout
from controller.api.names import MANAGED_BY, ROLLOUT_LABEL, SPLIT_HEADER, SPLIT_TAG, SPLIT_VALUE, WEIGHT_ANNOTATION
from controller.api.routing import CanaryMatch, RoutingMode, StringMatch
from controller.api.schedule import RouteState, request_id_regex, split_tagged
from controller.traffic import tenancy

#: In apply order: subsets and the split's metric tag exist before a route uses them.
TEMPLATE_NAMES = ("destinationrule.yaml.j2", "telemetry.yaml.j2", "virtualservice.yaml.j2")
#: libyaml's safe loader where PyYAML was built with it (ten times faster); the same YAML 1.1 rules.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RenderError(Exception):
    """A template could not be rendered or produced an object that breaks an invariant."""


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    subset: str | None


def environment(template_dir: Path) -> jinja2.Environment:
    """A strict jinja2 environment: a missing key is an error, never an empty string."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = _quote
    return env


def _quote(value: Any) -> str:
    """Emit a value as flow-style YAML in plain ASCII that reads back as exactly that value.

    Like JSON, but every character outside printable ASCII is written as a YAML escape
    (``\\x85``, ``\\u2028``, ``\\U0001f600``), so no user string can add a line break, a control
    character or anything a YAML reader refuses or folds; JSON's ``\\ud83d\\ude00`` pairs would
    read back as two lone surrogates in YAML, hence ``\\U``.
    """
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return _flow(value)


def _flow(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_string(str(k))}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(item) for item in value) + "]"
    raise RenderError(f"cannot emit a {type(value).__name__} into YAML")


def _float(value: float) -> str:
    """A float as YAML 1.1 reads one back: a dot, and a signed exponent (``1e-05`` is a string there)."""
    if not math.isfinite(value):
        raise RenderError(f"cannot emit {value!r} into YAML")
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    if e and exponent[0] not in "+-":
        exponent = "+" + exponent
    return mantissa + (f"e{exponent}" if e else "")


_PLAIN_ASCII = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}


def _string(text: str) -> str:
    """A double-quoted YAML scalar of pure printable ASCII."""
    out = ['"']
    for char in text:
        if char in _PLAIN_ASCII:
            out.append(char)
        elif char in ('"', "\\"):
            out.append("\\" + char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def render(rollout: ModelRollout, state: RouteState, env: jinja2.Environment) -> list[dict[str, Any]]:
    """The Istio objects for ``rollout`` at ``state``, DestinationRule before VirtualService."""
    objects: list[dict[str, Any]] = []
    for name, text in render_texts(rollout, state, env):
        try:
            documents = [d for d in yaml.load_all(text, Loader=_LOADER) if d is not None]
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at output line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise RenderError(f"{name}: template produced invalid YAML{where}: {problem}") from None
        objects.extend(documents)
    check_invariants(objects)
    return objects


def render_texts(rollout: ModelRollout, state: RouteState, env: jinja2.Environment) -> list[tuple[str, str]]:
    """Each template's name and the YAML text it renders to, before it is parsed."""
    context = template_context(rollout, state)
    texts: list[tuple[str, str]] = []
    for name in TEMPLATE_NAMES:
        try:
            texts.append((name, env.get_template(name).render(**context)))
        except jinja2.TemplateError as exc:
            raise RenderError(f"{_template_location(exc, name)}: template error: {exc}") from None
    return texts


def _template_location(exc: jinja2.TemplateError, default: str) -> str:
    """``file:line`` of the template that failed, which may be an imported one, not ``default``."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"{exc.name or default}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
    if frames:
        return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}"
    return default


def template_context(rollout: ModelRollout, state: RouteState) -> dict[str, Any]:
    """Everything the templates need, decided here: names, hosts, weights, matches, rewrites."""
    spec = rollout.spec
    triton = spec.routing.mode is RoutingMode.TRITON_VERSION
    port = spec.service.port
    stable = Destination(rollout.host, port, None if triton else spec.stable.name)
    canary = Destination(rollout.host, port, None if triton else spec.canary.name)
    labels = {**rollout.metadata.labels, **MANAGED_BY, ROLLOUT_LABEL: rollout.metadata.name}
    sticky = spec.routing.sticky
    context: dict[str, Any] = {
        "name": rollout.metadata.name,
        "namespace": rollout.metadata.namespace,
        "labels": labels,
        "annotations": {WEIGHT_ANNOTATION: str(state.canary_weight)},
        "host": rollout.host,
        "hosts": [rollout.host, *spec.service.hosts],
        "gateways": list(spec.service.gateways),
        "export_to": tenancy.export_to(rollout),  # scoped: see controller.traffic.tenancy
        "subsets": []
        if triton
        else [_subset(spec.stable.name, spec.stable.labels), _subset(spec.canary.name, spec.canary.labels)],
        "traffic_policy": _traffic_policy(rollout),
        "stable": _destination(stable),
        "canary": _destination(canary),
        "stable_weight": state.stable_weight,
        "canary_weight": state.canary_weight,
        "mirror_percent": state.mirror_percent,
        "cohorts": [_cohort(i, m) for i, m in enumerate(spec.routing.match)] if state.cohorts else [],
        "sticky": None,
        "timeout": spec.routing.timeout,
        "retries": _retries(rollout),
        "triton": None,
        "split": _split(rollout),
    }
    if sticky is not None and state.cohorts and state.canary_weight > 0:
        cookie_value = spec.canary.name
        context["sticky"] = {
            "match": {"cookie": {"regex": cookie_regex(sticky.cookie_name, cookie_value)}},
            "set_cookie": f"{sticky.cookie_name}={cookie_value}; Max-Age={int(sticky.max_age_seconds)}; Path=/",
        }
    if triton:
        assert spec.routing.triton is not None
        model = spec.routing.triton.model
        weight = state.canary_weight
        context["triton"] = {
            "infer_uri": f"/v2/models/{model}/infer",
            "stable_uri": f"/v2/models/{model}/versions/{spec.routing.triton.stable_version}/infer",
            "canary_uri": f"/v2/models/{model}/versions/{spec.routing.triton.canary_version}/infer",
            "canary_request_ids": request_id_regex(weight) if 0 < weight < 100 else None,
            "all_canary": weight == 100,
        }
    return context


def _split(rollout: ModelRollout) -> dict[str, Any] | None:
    """What tags the randomised split's requests (see :func:`controller.api.schedule.split_tagged`), or None.

    The weighted route sets the header, every other route removes it, and a Telemetry resource on
    both versions' pods (the labels they share) adds its value to Istio's request metrics, as the
    destination reports them.
    """
    if not split_tagged(rollout):
        return None
    stable, canary = rollout.spec.stable.labels, rollout.spec.canary.labels
    return {
        "set": {"request": {"set": {SPLIT_HEADER: SPLIT_VALUE}}},
        "remove": {"request": {"remove": [SPLIT_HEADER]}},
        "telemetry_name": f"{rollout.metadata.name}-split",
        "selector": {k: v for k, v in sorted(stable.items()) if canary.get(k) == v},
        "tag": SPLIT_TAG,
        "expression": f"request.headers['{SPLIT_HEADER}']",
    }


def _subset(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "labels": dict(labels)}


def _destination(destination: Destination) -> dict[str, Any]:
    out: dict[str, Any] = {"host": destination.host, "port": {"number": destination.port}}
    if destination.subset is not None:
        out["subset"] = destination.subset
    return out


def _traffic_policy(rollout: ModelRollout) -> dict[str, Any] | None:
    policy = rollout.spec.traffic_policy
    if policy is None:
        return None
    dumped: dict[str, Any] = policy.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped or None


def _retries(rollout: ModelRollout) -> dict[str, Any] | None:
    retries = rollout.spec.routing.retries
    if retries is None:
        return None
    dumped: dict[str, Any] = retries.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped


def _cohort(index: int, match: CanaryMatch) -> dict[str, Any]:
    headers = {name: _string_match(m) for name, m in match.headers.items()}
    if match.cookie is not None:
        headers["cookie"] = {"regex": cookie_regex(match.cookie.name, match.cookie.value)}
    return {"name": f"cohort-{match.name or index}", "headers": headers}


def cookie_regex(name: str, value: str) -> str:
    """An RE2 pattern for a Cookie header that carries ``name=value`` among any other cookies."""
    return f"^(.*; ?)?{re.escape(name)}={re.escape(value)}(;.*)?$"


def _string_match(match: StringMatch) -> dict[str, str]:
    for field in ("exact", "prefix", "regex"):
        value = getattr(match, field)
        if value is not None:
            return {field: value}
    raise ValueError("a header match needs exact, prefix or regex")


def check_invariants(objects: list[dict[str, Any]]) -> None:
    """Refuse output that breaks DESIGN.md section 4, whatever the templates say.

    Weights are integers in 0..100 summing to 100 on every weighted route; every routed subset is
    defined by a DestinationRule that comes *before* the VirtualService (make before break).
    """
    defined: dict[str, set[str]] = {}
    for position, obj in enumerate(objects):
        kind = obj.get("kind")
        spec = obj.get("spec") or {}
        if kind == "DestinationRule":
            defined.setdefault(spec.get("host", ""), set()).update(s["name"] for s in spec.get("subsets") or [])
        elif kind == "Telemetry":
            continue
        elif kind == "VirtualService":
            for i, route in enumerate(spec.get("http") or []):
                _check_route(i, route, defined)
        else:
            raise RenderError(f"object {position}: unexpected kind {kind!r}")


def _check_route(index: int, route: dict[str, Any], defined: dict[str, set[str]]) -> None:
    where = f"VirtualService http[{index}]"
    destinations = route.get("route") or []
    weights = [d.get("weight", 100 if len(destinations) == 1 else None) for d in destinations]
    if any(not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 100 for w in weights):
        raise RenderError(f"{where}: weights {weights} are not integers in 0..100")
    if destinations and sum(weights) != 100:
        raise RenderError(f"{where}: weights {weights} sum to {sum(weights)}, not 100")
    targets = [d["destination"] for d in destinations]
    if route.get("mirror"):
        targets.append(route["mirror"])
    for target in targets:
        subset = target.get("subset")
        if subset is not None and subset not in defined.get(target.get("host", ""), set()):
            raise RenderError(
                f"{where}: subset {subset!r} of {target.get('host')!r} is not defined by an earlier DestinationRule"
            )
