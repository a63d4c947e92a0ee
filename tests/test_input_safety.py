"""Every user string of the policy model, whatever its text: refused in one line, or rendered exactly.

The class of issue 11's findings 2(a) and 2(b): a header match value with a C1 control passed
validation and then broke rendering (``\\x85`` even turned silently into a space); a regex of
nested groups raised RecursionError in the validator. The fields are enumerated from the pydantic
model itself, so a string field added later is drawn too (and this file fails until the fixtures
below give it a place).
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import types
import typing
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from controller.api import schema
from controller.api.fields import MAX_REGEX_NESTING, regex_bounds
from controller.api.load import Document, PolicyError, validate
from controller.api.model import ModelRollout
from controller.api.routing import StringMatch
from controller.api.schedule import RouteState, schedule, state_for_step
from controller.api.text import printable
from controller.cli.main import cli
from controller.traffic.render import environment, render, render_texts
from controller.traffic.templating import default_environment, template_dir

ENV = default_environment()

# --- the fields -------------------------------------------------------------------------------

KEY = "<key>"  # a map's key (the first one of the fixture's map)
ANY = "<any>"  # a list item or a map value: whichever of the fixture's has the rest of the path

Slot = tuple[str, ...]


def _accepts_str(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _accepts_str(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_str(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return any(isinstance(a, str) for a in typing.get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, str)


def _slots(annotation: Any, prefix: Slot) -> Iterator[Slot]:
    """Every place in a document of this type where a string goes."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _slots(typing.get_args(annotation)[0], prefix)
        return
    if origin in (typing.Union, types.UnionType):
        found: list[Slot] = []
        for arg in typing.get_args(annotation):
            found += [s for s in _slots(arg, prefix) if s not in found]
        yield from found
        return
    if origin is list:
        yield from _slots(typing.get_args(annotation)[0], (*prefix, ANY))
        return
    if origin is dict:
        key, value = typing.get_args(annotation)
        if _accepts_str(key):
            yield (*prefix, KEY)
        yield from _slots(value, (*prefix, ANY))
        return
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            yield from _slots(field.annotation, (*prefix, field.alias or name))
        return
    if _accepts_str(annotation) or annotation is Any:
        yield prefix


SLOTS: list[Slot] = sorted(set(_slots(ModelRollout, ())))

# --- fixtures that give every slot a place ----------------------------------------------------

_METRICS: list[dict[str, Any]] = [
    {
        "name": "latency",
        "kind": "IstioLatency",
        "quantile": 0.99,
        "weight": 2,
        "slo": {"max": "250ms"},
        "margin": {"relative": "5%"},
    },
    {"name": "errors", "kind": "IstioErrorRate", "slo": {"max": "2%"}, "margin": {"absolute": "0.25%"}},
    {"name": "tput", "kind": "TritonGpuUtilization", "slo": {"max": 0.95}},  # no margin: cohorts (finding 15)
    {
        "name": "accuracy",
        "kind": "CustomRatio",
        "higherIsBetter": True,
        "ratio": {
            "success": "correct_total",
            "total": "labelled_total",
            "versionLabel": "version",
            "matchLabels": {"model": "ranker"},
            "splitLabel": "split",
        },
        "slo": {"min": "85%"},
        "margin": {"absolute": "1%"},
    },
    {
        "name": "scores",
        "kind": "PredictionDistribution",
        "outputs": {
            "histogram": "ranker_score",
            "versionLabel": "version",
            "namespaceLabel": "namespace",
            "matchLabels": {"model": "ranker"},
            "positiveAbove": 0.5,
            "splitLabel": "split",
        },
        "margin": {"absolute": "10%"},
    },
    {
        "name": "classes",
        "kind": "PredictionDistribution",
        "outputs": {
            "counter": "ranker_class_total",
            "classLabel": "label",
            "matchLabels": {"model": "ranker"},
            "positiveClasses": ["top"],
            "splitLabel": "split",
        },
        "margin": {"absolute": "5%"},
        "onDrift": "Pause",
    },
]

SUBSET: dict[str, Any] = {
    "apiVersion": "canarist.io/v1alpha1",
    "kind": "ModelRollout",
    "metadata": {
        "name": "fraud-detector",
        "namespace": "ml-serving",
        "labels": {"team": "payments-ml"},
        "annotations": {"example.com/owner": "payments"},
        "uid": "0b5c1d6e",
        "resourceVersion": "42",
        "generation": 3,
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "deletionTimestamp": "2026-01-02T00:00:00Z",
        "finalizers": ["canarist.io/routes"],
        "ownerReferences": [{"kind": "Thing"}],
        "managedFields": [{"manager": "kubectl"}],
    },
    "spec": {
        "service": {
            "name": "fraud-detector",
            "port": 8080,
            "host": "fraud-detector.ml-serving.svc.cluster.local",
            "hosts": ["fraud.ml-serving.example.com"],
            "gateways": ["mesh", "ml-serving/public"],
        },
        "stable": {"name": "v41", "labels": {"app": "fraud-detector", "version": "v41"}},
        "canary": {"name": "v42", "labels": {"app": "fraud-detector", "version": "v42"}},
        "routing": {
            "mode": "Subset",
            "match": [
                {"name": "beta", "headers": {"x-cohort": {"exact": "beta users"}}},
                {"name": "staff", "headers": {"x-team": {"prefix": "staff-"}}},
                {"name": "agents", "headers": {"user-agent": {"regex": "^Mozilla/5\\.0 \\(X11; .*\\)$"}}},
                {"name": "opt-in", "cookie": {"name": "search-beta", "value": "on"}},
            ],
            "sticky": {"cookieName": "fraud-canary", "maxAge": "24h"},
            "timeout": "2s",
            "retries": {"attempts": 2, "perTryTimeout": "500ms", "retryOn": "connect-failure,5xx"},
        },
        "trafficPolicy": {
            "loadBalancer": {"simple": "LEAST_REQUEST"},
            "connectionPool": {
                "tcp": {"maxConnections": 100, "connectTimeout": "250ms"},
                "http": {"http2MaxRequests": 1000, "idleTimeout": "90s"},
            },
            "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"},
        },
        "strategy": {
            "mirror": {"percentage": 12.5, "intervals": 1},
            "steps": [1, 5, 50],
            "interval": "1m",
            "progressDeadline": "20m",
            "holdOnSuspicion": "10m",
            "onNoData": "Pause",
            "onInconclusive": "Abort",
        },
        "gate": {
            "triton": {
                "url": "http://fraud-detector-v42.ml-serving:8000",
                "stableUrl": "fraud-detector-v41.ml-serving:8000",
                "model": "fraud",
                "timeout": "10s",
                "goldenRequests": [
                    {
                        "name": "two-rows",
                        "inputs": {"features": {"datatype": "FP32", "shape": [1, 2], "data": [0.5, 1]}},
                        "outputs": {"score": {"shape": [1], "data": [0.8], "tolerance": 0.01}},
                    }
                ],
            }
        },
        "analysis": {"alpha": 0.05, "metrics": _METRICS},
        "notify": {
            "sinks": [
                {
                    "name": "team",
                    "type": "Slack",
                    "urlFrom": {"secretKeyRef": {"name": "fraud.alerts", "key": "slack_url"}},
                    "events": ["RolledBack", "SloBreached"],
                }
            ]
        },
    },
    "status": {"phase": "Progressing"},
}

TRITON: dict[str, Any] = copy.deepcopy(SUBSET)
TRITON["spec"]["routing"]["mode"] = "TritonVersion"
TRITON["spec"]["routing"]["triton"] = {"model": "ranker", "stableVersion": 3, "canaryVersion": 4}
del TRITON["spec"]["strategy"]["mirror"]
del TRITON["spec"]["gate"]["triton"]["stableUrl"]  # one Triton serves both versions
TRITON["spec"]["gate"]["triton"]["model"] = "ranker"
TRITON["spec"]["analysis"]["metrics"] = [  # a prediction distribution compares versions: none with cohorts here
    m for m in TRITON["spec"]["analysis"]["metrics"] if m["kind"] != "PredictionDistribution"
]
for _metric in TRITON["spec"]["analysis"]["metrics"]:  # with cohorts in Triton mode, only SLO guards are valid
    _metric.pop("margin", None)
    (_metric.get("ratio") or {}).pop("splitLabel", None)  # nothing sets the split header in Triton mode

FIXTURES = {"subset": SUBSET, "triton": TRITON}


def _places(data: Any, slot: Slot, done: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Concrete paths in ``data`` for ``slot`` (a trailing KEY names the key itself)."""
    if not slot:
        yield done
        return
    part, rest = slot[0], slot[1:]
    if part == KEY:
        if isinstance(data, dict) and data:
            yield (*done, KEY)
    elif part == ANY:
        items = (
            list(data.items()) if isinstance(data, dict) else list(enumerate(data)) if isinstance(data, list) else []
        )
        for index, item in items:
            yield from _places(item, rest, (*done, index))
    elif isinstance(data, dict) and part in data:
        yield from _places(data[part], rest, (*done, part))
    elif isinstance(data, dict) and not rest and data:
        yield (*done, part)  # an optional field the fixture leaves out: set it


def place(slot: Slot) -> tuple[dict[str, Any], tuple[str | int, ...]]:
    """The fixture and concrete path for ``slot``: one that holds it if any, else where it can go."""
    found = [(fixture, path) for fixture in FIXTURES.values() for path in _places(fixture, slot)]
    if not found:
        raise LookupError(slot)
    return next(((f, p) for f, p in found if _get(f, p) is not _ABSENT), found[0])


_ABSENT = object()


def _get(data: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        if part == KEY:
            return next(iter(data))
        if isinstance(data, dict) and part not in data:
            return _ABSENT
        data = data[part]
    return data


def put(fixture: dict[str, Any], path: tuple[str | int, ...], text: str) -> dict[str, Any]:
    doc = copy.deepcopy(fixture)
    parent: Any = doc
    for part in path[:-2] if path[-1] == KEY else path[:-1]:
        parent = parent[part]
    if path[-1] == KEY:
        mapping = parent[path[-2]]
        first = next(iter(mapping))
        parent[path[-2]] = {(text if k == first else k): v for k, v in mapping.items()}
    else:
        parent[path[-1]] = text
    return doc


def _label(slot: Slot) -> str:
    return ".".join(slot)


def test_every_string_field_of_the_model_has_a_place_in_a_fixture() -> None:
    missing = []
    for slot in SLOTS:
        try:
            place(slot)
        except LookupError:
            missing.append(_label(slot))
    assert not missing, f"add these string fields to the fixtures of {__file__}: {missing}"


def test_the_walk_finds_the_fields_the_findings_were_about() -> None:
    labels = {_label(s) for s in SLOTS}
    for expected in (
        "spec.routing.match.<any>.headers.<any>.exact",
        "spec.routing.match.<any>.headers.<any>.prefix",
        "spec.routing.match.<any>.headers.<any>.regex",
        "spec.routing.match.<any>.headers.<key>",
        "metadata.labels.<key>",
        "metadata.labels.<any>",
        "spec.routing.triton.model",
        "spec.strategy.interval",
        "spec.analysis.metrics.<any>.slo.max",
    ):
        assert expected in labels
    assert len(SLOTS) > 50


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_the_fixtures_are_valid(name: str) -> None:
    rollout = validate(Document(copy.deepcopy(FIXTURES[name]), {}), name)
    check_rendering(rollout)


# --- what is drawn ----------------------------------------------------------------------------

NASTY = [
    *"\x00\x01\t\n\r\x1b\x7f\x80\x85\x9b\x9f\xa0\xad",
    *"\u2028\u2029\u200b\u200e\u202e\u2066\ufeff\ufdd0\ufffe\uffff\U0001fffe\U0010ffff\U0001f600",
    *"\"'`\\{}[]#:&*!|>%@,?- .~=;$^()/",
    "é",
]


def _nested(depth: int) -> str:
    return "(" * depth + "a" + ")" * depth


TEXT = st.one_of(
    st.text(),  # every category but surrogates
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.text(st.sampled_from(NASTY + list("abcz09")), max_size=30),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "9", "(", "é", "\x80", "a1-"]), st.integers(60, 5000)),
    st.integers(1, 700).map(_nested),
    st.integers(1, 400).map(lambda n: "(?:" * n + "x" + ")" * n),
    st.integers(1, 10**30).map(lambda n: f"a{{{n}}}"),
    st.tuples(st.integers(1, 2000), st.integers(1, 2000)).map(lambda t: f"(a{{{t[0]}}}){{{t[1]}}}"),
)


@st.composite
def near(draw: st.DrawFn, original: str) -> str:
    """The fixture's own (valid) value with one nasty character or piece put into it."""
    at = draw(st.integers(0, len(original)))
    piece = draw(st.one_of(st.sampled_from(NASTY), st.text(max_size=3)))
    return original[:at] + piece + original[at:]


# --- the property -----------------------------------------------------------------------------

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
CONTROL_IN_VALUE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")


def _strings(node: Any, *, keys: bool = True) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            if keys:
                yield from _strings(key)
            yield from _strings(value, keys=keys)
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _strings(item, keys=keys)


class Recorder:
    """A copy of the rendering environment whose ``q`` filter remembers every value it emits."""

    def __init__(self) -> None:
        self.env = environment(template_dir())
        self.quote = self.env.filters["q"]
        self.env.filters["q"] = self.record
        self.emitted: list[Any] = []

    def record(self, value: Any) -> str:
        self.emitted.append(value)
        text: str = self.quote(value)
        return text


RECORDER = Recorder()


def states(rollout: ModelRollout) -> list[RouteState]:
    """Every step, promotion, and a rollback (cohorts off)."""
    every = [state_for_step(rollout, i) for i in range(len(schedule(rollout)) + 1)]
    return [*every, RouteState(0, cohorts=False)]


def check_rendering(rollout: ModelRollout) -> None:
    """Render every state; the output is clean YAML that reads back as exactly the values given."""
    for state in states(rollout):
        RECORDER.emitted.clear()
        objects = render(rollout, state, RECORDER.env)
        given = set(_strings(RECORDER.emitted))
        rendered = set(_strings(objects))
        assert given <= rendered, f"not read back exactly: {sorted(given - rendered)!r}"
        for value in rendered:
            assert not CONTROL_IN_VALUE.search(value), f"control character in rendered value {value!r}"
        for name, text in render_texts(rollout, state, ENV):
            assert not CONTROL.search(text), f"{name}: a control character in the rendered YAML"
    dumped = yaml.safe_dump_all(objects, sort_keys=False)  # what `canarist render` prints
    assert list(yaml.safe_load_all(dumped)) == objects
    assert not CONTROL.search(dumped)


def check_text(slot: Slot, text: str) -> None:
    fixture, path = place(slot)
    doc = put(fixture, path, text)
    try:
        rollout = validate(Document(doc, {}), "policy.yaml")
    except PolicyError as exc:
        for line in str(exc).split("\n"):
            assert line.startswith("policy.yaml:"), line
            assert line.isprintable(), f"unprintable characters in {line!r}"
        assert len(str(exc).split("\n")) == len(exc.diagnostics)
        return
    check_rendering(rollout)


@pytest.mark.parametrize("slot", SLOTS, ids=_label)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_any_text_in_any_string_field_is_refused_in_one_line_or_rendered_exactly(
    slot: Slot, data: st.DataObject
) -> None:
    fixture, path = place(slot)
    original = _get(fixture, path)
    strategy = st.one_of(TEXT, near(original)) if isinstance(original, str) else TEXT
    check_text(slot, data.draw(strategy, label="text"))


# --- the API server and editors refuse the same characters -----------------------------------

_MATCH = ("spec", "routing", "match", "items", "headers", "additionalProperties")
_CRD_NODES = schema.crd_openapi_schema()
for _part in _MATCH:
    _CRD_NODES = _CRD_NODES[_part] if _part in ("items", "additionalProperties") else _CRD_NODES["properties"][_part]
_EDITOR = schema.policy_json_schema()["$defs"]["StringMatch"]["properties"]


def _end_anchored_pattern(validator: Any, pattern: str, instance: Any, node: Any) -> Iterator[Any]:
    """``pattern`` as Go RE2 and ECMAScript read it: ``$`` is the end of the text, not before a final newline."""
    if isinstance(instance, str) and not re.search(re.sub(r"\$$", r"\\Z", pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_RE2_VALIDATOR = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _end_anchored_pattern})


def _schema_accepts(node: dict[str, Any], text: str) -> bool:
    return not any(True for _ in _RE2_VALIDATOR(node).iter_errors(text))


@pytest.mark.parametrize("field", ["exact", "prefix", "regex"])
@settings(max_examples=150, deadline=None)
@given(text=st.one_of(TEXT, st.text(st.sampled_from(NASTY + list("ab")), max_size=8), st.sampled_from(NASTY)))
def test_the_crd_and_the_editor_schema_refuse_what_the_model_refuses(field: str, text: str) -> None:
    """The API server's pattern (Go RE2) is the model's: same character class, same length bound."""
    try:
        StringMatch.model_validate({field: text})
        model = True
    except ValueError:
        model = False
    crd = _schema_accepts(_CRD_NODES["properties"][field], text)
    editor = _schema_accepts({"$defs": {}, **_EDITOR[field]}, text)
    assert crd == editor
    if field == "regex":  # the model checks RE2's syntax too, which a schema cannot
        assert crd or not model
    else:
        assert crd == model


# --- the inputs that were found, as a table, through the CLI ----------------------------------

HEADER = ("spec", "routing", "match", ANY, "headers", ANY)
#: The fixtures' public host is the administrator's to grant (finding 1); these tests grant it.
ALLOW = ["--allow-host", "*=*"]
FOUND = [
    ("c1-in-exact", (*HEADER, "exact"), "beta\x80"),
    ("nel-in-exact", (*HEADER, "exact"), "beta\x85users"),
    ("nel-in-prefix", (*HEADER, "prefix"), "staff\x85"),
    ("line-separator", (*HEADER, "exact"), "a\u2028b"),
    ("bom", (*HEADER, "prefix"), "\ufeffstaff"),
    ("non-character", (*HEADER, "exact"), "a\ufffe"),
    ("c1-in-regex", (*HEADER, "regex"), "^a\x80$"),
    ("nel-in-regex", (*HEADER, "regex"), "^a\x85b$"),
    ("newline-in-regex", (*HEADER, "regex"), "^a\nb$"),
    ("nested-groups", (*HEADER, "regex"), _nested(500)),
    ("nested-groups-at-the-limit", (*HEADER, "regex"), _nested(101)),
    ("huge-repetition", (*HEADER, "regex"), "a{99999999999999999999}"),
    ("nested-repetition", (*HEADER, "regex"), "(a{1000}){1000}"),
    ("terminal-escape-in-key", ("metadata", "labels", KEY), "\x1b[31mred"),
]


@pytest.mark.parametrize(("slot", "text"), [(s, t) for _, s, t in FOUND], ids=[i for i, _, _ in FOUND])
def test_the_found_inputs_are_refused(slot: Slot, text: str) -> None:
    fixture, path = place(slot)
    with pytest.raises(PolicyError) as info:
        validate(Document(put(fixture, path, text), {}), "policy.yaml")
    assert all(line.isprintable() for line in str(info.value).split("\n"))


def test_a_regex_nested_within_the_bound_is_accepted_and_rendered() -> None:
    fixture, path = place((*HEADER, "regex"))
    rollout = validate(Document(put(fixture, path, _nested(100)), {}), "policy.yaml")
    check_rendering(rollout)


@pytest.mark.parametrize(
    ("regex", "depth", "repeat"),
    [
        ("abc", 0, 1),
        ("((a))", 2, 1),
        ("(?:a)(?:b(c))", 2, 1),
        ("[(]\\(\\)[]()][^]()]", 0, 1),  # no group inside a class or after a backslash
        ("a{1000}", 0, 1000),
        ("a{2,7}b{5,}", 0, 7),
        ("(a{10}){20}", 1, 200),
        ("((a{10}){10}){10}", 2, 1000),
        ("(a{10})(b{3}){4}", 1, 12),
        ("a{,5}x{", 0, 1),  # not counts in RE2: literal braces
        (_nested(MAX_REGEX_NESTING + 1), MAX_REGEX_NESTING + 1, 1),
    ],
)
def test_regex_bounds_follow_the_groups_and_counts_re2_sees(regex: str, depth: int, repeat: int) -> None:
    assert regex_bounds(regex) == (depth, repeat)


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from("()[]\\{},0123456789a^?:*|"), max_size=60))
def test_every_regex_is_refused_with_a_value_error_or_compiles(text: str) -> None:
    """Whatever the text, validation ends in a ValidationError (a ValueError) or an accepted regex."""
    try:
        StringMatch.model_validate({"regex": text})
    except ValueError:
        return
    re.compile(text)


def _write(tmp_path: Path, ident: str, slot: Slot, text: str | None) -> Path:
    fixture, path = place(slot)
    file = tmp_path / f"{ident}.yaml"
    doc = fixture if text is None else put(fixture, path, text)
    file.write_text(yaml.safe_dump(doc, allow_unicode=False), encoding="utf-8")
    return file


@pytest.mark.parametrize("slot", [(*HEADER, "exact"), ("spec", "routing", "triton", "model")], ids=["subset", "triton"])
def test_validate_accepts_the_fixtures(slot: Slot, tmp_path: Path) -> None:
    file = _write(tmp_path, "fixture", slot, None)
    result = CliRunner().invoke(cli, ["validate", *ALLOW, str(file)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("ident", "slot", "text"), FOUND, ids=[i for i, _, _ in FOUND])
def test_validate_refuses_each_in_one_line(ident: str, slot: Slot, text: str, tmp_path: Path) -> None:
    file = _write(tmp_path, ident, slot, text)
    result = CliRunner().invoke(cli, ["validate", *ALLOW, str(file)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"{file}:") and lines[0].isprintable(), lines
    field = "metadata.labels" if slot[0] == "metadata" else "spec.routing.match["
    assert f": {field}" in lines[0], lines


def test_validate_in_its_own_process_prints_no_traceback(tmp_path: Path) -> None:
    files = [_write(tmp_path, ident, slot, text) for ident, slot, text in FOUND]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "canarist"), "validate", *ALLOW, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert sorted(line.split(":")[0] for line in lines) == sorted(str(f) for f in files)
    assert all(line.isprintable() for line in lines)


def _removed(char: str) -> bool:
    """What printed text never holds: controls, format characters, surrogates, private or unassigned
    code points, line and paragraph separators."""
    category = unicodedata.category(char)
    return category[0] == "C" or category in ("Zl", "Zp")


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(max_codepoint=0x9F)) | st.text(), limit=st.integers(1, 40))
def test_printable_keeps_text_as_it_is_exactly_when_nothing_is_removed_or_cut(text: str, limit: int) -> None:
    """Class: any text (ASCII with C0 and C1 controls often, any character else): the printed text is
    bounded and holds nothing removable, and it is the text itself exactly when the text was so."""
    shown = printable(text, limit)
    assert len(shown) <= limit and not any(map(_removed, shown))
    assert (shown == text) == (len(text) <= limit and not any(map(_removed, text)))
