"""The editor schema and the CRD's structural schema, both generated from the policy model."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pydantic
import pytest
import yaml

from controller.api import schema
from controller.api.fields import QUANTITY_PATTERN
from controller.api.metrics_spec import MetricKind
from controller.api.model import GROUP, KIND, PLURAL, VERSION, ModelRollout, OnTimeout

ROOT = Path(__file__).resolve().parent.parent
ISTIO = ROOT / "istio"
POLICY_FILES = sorted((ROOT / "policies").glob("*.yaml"))
FRAUD = ROOT / "policies" / "fraud-detector-istio.yaml"


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


POLICIES = [(f"{path.name}#{i}", doc) for path in POLICY_FILES for i, doc in enumerate(load_docs(path))]


# --- a checker for Kubernetes structural schemas ----------------------------------------------
# The rules of apiextensions-apiserver (pkg/apiserver/schema/validation.go, ValidateStructural) and of
# CRD validation, as documented under "Specifying a structural schema" on kubernetes.io.

SCHEMA_PROPS = frozenset(
    {"type", "format", "description", "default", "enum", "nullable", "example", "externalDocs"}
    | {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
    | {"minLength", "maxLength", "pattern", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties"}
    | {"required", "properties", "additionalProperties", "items", "allOf", "anyOf", "oneOf", "not"}
    | {"x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "x-kubernetes-embedded-resource"}
    | {"x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-validations"}
)
TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean"})
JUNCTORS = ("allOf", "anyOf", "oneOf")
NOT_IN_JUNCTORS = ("type", "description", "default", "additionalProperties", "nullable", "title")
INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]
# allowedFieldsAtRootSchema in apiextensions-apiserver's CRD validation.
ROOT_KEYS = frozenset(
    {"description", "type", "format", "title", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum"}
    | {"maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf", "required"}
    | {
        "items",
        "properties",
        "externalDocs",
        "example",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-validations",
    }
)
RE2_UNSUPPORTED = re.compile(r"\(\?[=!<]|\(\?P[<=]|\\[1-9]")


def _type_problems(node: dict[str, Any], path: str) -> Iterator[str]:
    kind = node.get("type")
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if preserve and int_or_string:
        yield f"{path}: int-or-string and preserve-unknown-fields are exclusive"
    if kind is None and not (preserve or int_or_string):
        yield f"{path}: type must not be empty"
    if kind is not None and kind not in TYPES:
        yield f"{path}: unknown type {kind!r}"
    if kind == "array" and "items" not in node:
        yield f"{path}: an array must specify items"
    if "items" in node and kind != "array":
        yield f"{path}: items on a non-array"


def _object_problems(node: dict[str, Any], path: str) -> Iterator[str]:
    extra = node.get("additionalProperties")
    if "properties" in node and extra is not None:
        yield f"{path}: properties and additionalProperties are mutually exclusive"
    if extra is not None and not isinstance(extra, dict):
        yield f"{path}: additionalProperties must be a schema"
    if ("properties" in node or extra is not None) and node.get("type") != "object":
        yield f"{path}: properties on a non-object"
    for name in node.get("required", []):
        if name not in node.get("properties", {}):
            yield f"{path}: required {name!r} is not a property"


def _value_problems(node: dict[str, Any], path: str) -> Iterator[str]:
    for key in sorted(set(node) - SCHEMA_PROPS):
        yield f"{path}: {key!r} is not allowed in a CRD schema"
    if "default" in node and node["default"] is None:
        yield f"{path}: default must not be null"
    elif "default" in node:
        for error in jsonschema.Draft4Validator(closed(node)).iter_errors(node["default"]):
            yield f"{path}: default {node['default']!r} is invalid: {error.message}"
    if node.get("uniqueItems") is True:
        yield f"{path}: uniqueItems must not be true"
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if key in node and (not isinstance(node[key], bool) or bound not in node):
            yield f"{path}: {key} must be a boolean next to {bound}"
    if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
        yield f"{path}: enum must be a non-empty list"
    if "pattern" in node:
        try:
            re.compile(node["pattern"])
        except re.error as exc:
            yield f"{path}: pattern does not compile: {exc}"
        if RE2_UNSUPPORTED.search(node["pattern"]):
            yield f"{path}: pattern uses syntax Go's RE2 does not support"


def _root_problems(node: dict[str, Any], path: str) -> Iterator[str]:
    if node.get("type") != "object":
        yield f"{path}: the root must be an object"
    for key in sorted(set(node) - ROOT_KEYS):
        yield f"{path}: {key!r} is not allowed at the root"
    props = node.get("properties", {})
    for name in ("apiVersion", "kind"):
        if name in props and props[name].get("type") != "string":
            yield f"{path}.{name}: must be a string"
    meta = props.get("metadata")
    if meta is not None and (meta.get("type") != "object" or set(meta) - {"type", "properties"}):
        yield f"{path}.metadata: only type object (and name/generateName) may be specified"
    elif meta is not None and set(meta.get("properties", {})) - {"name", "generateName"}:
        yield f"{path}.metadata: only name and generateName may be restricted"


def _nested_problems(branch: Any, outer: dict[str, Any], path: str) -> Iterator[str]:
    """A schema under allOf/anyOf/oneOf/not only adds value validation to what is specified outside."""
    if not isinstance(branch, dict):
        yield f"{path}: not a schema object"
        return
    for key in branch:
        if key in NOT_IN_JUNCTORS or key.startswith("x-kubernetes-"):
            yield f"{path}: {key!r} must not be set inside a logical junctor"
    for name in branch.get("properties", {}):
        if name not in outer.get("properties", {}):
            yield f"{path}: property {name!r} is not specified outside the junctor"
    if "items" in branch and "items" not in outer:
        yield f"{path}: items are not specified outside the junctor"
    if "metadata" in branch.get("properties", {}):
        yield f"{path}: metadata must not be specified in a nested context"


def _junctor_problems(node: dict[str, Any], path: str) -> Iterator[str]:
    for junctor in JUNCTORS:
        branches = node.get(junctor, [])
        if junctor == "anyOf" and node.get("x-kubernetes-int-or-string") is True and branches == INT_OR_STRING_ANY_OF:
            continue  # the one typed anyOf Kubernetes allows
        for i, branch in enumerate(branches):
            yield from _nested_problems(branch, node, f"{path}.{junctor}[{i}]")
    if "not" in node:
        yield from _nested_problems(node["not"], node, f"{path}.not")


def structural_problems(node: Any, path: str = "openAPIV3Schema", *, root: bool = True) -> list[str]:
    """Every way ``node`` is not a structural openAPIV3Schema the API server accepts, one line each."""
    if not isinstance(node, dict):
        return [f"{path}: not a schema object"]
    problems = [
        *_type_problems(node, path),
        *_object_problems(node, path),
        *_value_problems(node, path),
        *_junctor_problems(node, path),
        *(_root_problems(node, path) if root else ()),
    ]
    children = [(f"{path}.{name}", sub) for name, sub in node.get("properties", {}).items()]
    if isinstance(node.get("additionalProperties"), dict):
        children.append((f"{path}{{}}", node["additionalProperties"]))
    if "items" in node:
        children.append((f"{path}[]", node["items"]))
    for child_path, child in children:
        problems += structural_problems(child, child_path, root=False)
    return problems


def closed(node: Any) -> Any:
    """What the API server enforces, as plain JSON Schema: objects with properties refuse unknown keys
    (the API server prunes them; kubectl's strict field validation reports them)."""
    if isinstance(node, list):
        return [closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: closed(value) for key, value in node.items() if not key.startswith("x-kubernetes-")}
    open_keys = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
    if node.get("type") == "object" and "properties" in node and not open_keys:
        out["additionalProperties"] = False
    return out


def crd_validator() -> jsonschema.Draft4Validator:
    # Draft 4 has OpenAPI 3.0's boolean exclusiveMinimum/exclusiveMaximum.
    return jsonschema.Draft4Validator(closed(schema.crd_openapi_schema()))


def editor_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema.policy_json_schema())


# --- broken documents: each one must be refused by the model, the CRD and the editor schema ---


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value

    return edit


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return edit


BROKEN: dict[str, Callable[[dict[str, Any]], None]] = {
    "unknown field in spec": _set("spec.bogus", 1),
    "unknown nested field": _set("spec.strategy.stepz", [1, 2]),
    "unknown field in a list item": _set("spec.analysis.metrics.0.treshold", 0.1),
    "wrong type: port as text": _set("spec.service.port", "http"),
    "wrong type: steps as text": _set("spec.strategy.steps", "1,5,25"),
    "wrong type: labels as list": _set("spec.stable.labels", ["app=x"]),
    "bad enum: metric kind": _set("spec.analysis.metrics.0.kind", "IstioLatencyP99"),
    "bad enum: onNoData": _set("spec.strategy.onNoData", "Retry"),
    "bad enum: load balancer": _set("spec.trafficPolicy.loadBalancer.simple", "LEAST_CONN"),
    "missing required: analysis": _delete("spec.analysis"),
    "missing required: service port": _delete("spec.service.port"),
    "missing required: metric kind": _delete("spec.analysis.metrics.0.kind"),
    "out of range: step above 100": _set("spec.strategy.steps", [1, 150]),
    "out of range: alpha zero (exclusive)": _set("spec.analysis.alpha", 0),
    "out of range: fraction above 1": _set("spec.analysis.metrics.0.margin.relative", 5),
    "bad pattern: fraction text": _set("spec.analysis.metrics.0.margin.relative", "five percent"),
    "too long: quantity text": _set("spec.analysis.metrics.0.slo.max", "9" * 40),
    "bad pattern: service name": _set("spec.service.name", "Fraud_Detector"),
    "bad pattern: label value": _set("spec.canary.labels.version", "v42 beta"),
    "empty metrics": _set("spec.analysis.metrics", []),
}


def broken(name: str) -> dict[str, Any]:
    doc = copy.deepcopy(load_docs(FRAUD)[0])
    BROKEN[name](doc)
    return doc


def refuses(validator: Any, doc: dict[str, Any]) -> bool:
    return any(True for _ in validator.iter_errors(doc))


# --- the checked-in files ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(schema.generated_files()))
def test_checked_in_files_match_the_generator(name: str) -> None:
    path = ISTIO / name
    assert path.is_file(), f"istio/{name} is missing: run `{schema.REGENERATE}`"
    expected = schema.generated_files()[name]
    assert path.read_text(encoding="utf-8") == expected, (
        f"istio/{name} is out of date with controller/api/model.py: run `{schema.REGENERATE}`"
    )


def test_checked_in_files_parse_to_the_generated_objects() -> None:
    assert yaml.safe_load((ISTIO / schema.CRD_FILE).read_text(encoding="utf-8")) == schema.crd()
    assert json.loads((ISTIO / schema.SCHEMA_FILE).read_text(encoding="utf-8")) == schema.policy_json_schema()


def test_the_crd_yaml_has_no_anchors() -> None:
    text = schema.crd_yaml()
    assert not re.search(r"[&*]id\d+", text)


def test_write_regenerates_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schema.main(["--write", "--dir", str(tmp_path)]) == 0
    for name, text in schema.generated_files().items():
        assert (tmp_path / name).read_text(encoding="utf-8") == text
    assert "wrote" in capsys.readouterr().out


def test_without_write_it_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert schema.main([]) == 0
    assert capsys.readouterr().out == schema.crd_yaml()


# --- the structural checker itself ------------------------------------------------------------

NOT_STRUCTURAL = {
    "typed anyOf with preserve-unknown-fields": {
        "type": "object",
        "properties": {
            "x": {"anyOf": [{"type": "number"}, {"type": "string"}], "x-kubernetes-preserve-unknown-fields": True}
        },
    },
    "missing type": {"type": "object", "properties": {"x": {"maxLength": 3}}},
    "a $ref": {"type": "object", "properties": {"x": {"$ref": "#/$defs/X"}}},
    "a title": {"type": "object", "properties": {"x": {"type": "string", "title": "X"}}},
    "a const": {"type": "object", "properties": {"x": {"type": "string", "const": "a"}}},
    "patternProperties": {"type": "object", "properties": {"x": {"type": "object", "patternProperties": {}}}},
    "properties and additionalProperties": {
        "type": "object",
        "properties": {"x": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}},
    },
    "additionalProperties false": {
        "type": "object",
        "properties": {"x": {"type": "object", "additionalProperties": False}},
    },
    "additionalProperties at the root": {"type": "object", "additionalProperties": {"type": "string"}},
    "null default": {"type": "object", "properties": {"x": {"type": "string", "default": None}}},
    "numeric exclusiveMinimum": {"type": "object", "properties": {"x": {"type": "number", "exclusiveMinimum": 0}}},
    "array without items": {"type": "object", "properties": {"x": {"type": "array"}}},
    "description in anyOf": {
        "type": "object",
        "properties": {"x": {"type": "string", "anyOf": [{"description": "d", "pattern": "a"}]}},
    },
    "property only inside anyOf": {
        "type": "object",
        "properties": {"x": {"type": "object", "properties": {}, "anyOf": [{"properties": {"y": {}}}]}},
    },
    "restricted metadata": {"type": "object", "properties": {"metadata": {"type": "object", "required": ["labels"]}}},
    "lookahead pattern": {"type": "object", "properties": {"x": {"type": "string", "pattern": "^(?!a)"}}},
    "a default at the root": {"type": "object", "default": {}},
    "an invalid default": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 1, "default": 0}}},
    "uniqueItems": {
        "type": "object",
        "properties": {"x": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}},
    },
    "null in a type union": {"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "null"}]}}},
}


@pytest.mark.parametrize("name", sorted(NOT_STRUCTURAL))
def test_the_checker_rejects_non_structural_schemas(name: str) -> None:
    assert structural_problems(NOT_STRUCTURAL[name]), name


def test_the_checker_accepts_the_two_kubernetes_escapes() -> None:
    ok = {
        "type": "object",
        "properties": {
            "port": {"x-kubernetes-int-or-string": True, "anyOf": INT_OR_STRING_ANY_OF},
            "raw": {"x-kubernetes-preserve-unknown-fields": True, "minimum": 0, "pattern": "^a$"},
            "metadata": {"type": "object"},
        },
    }
    assert structural_problems(ok) == []


# --- the CRD schema ---------------------------------------------------------------------------


def test_the_crd_schema_is_structural() -> None:
    assert structural_problems(schema.crd_openapi_schema()) == []


def test_the_crd_schema_has_no_json_schema_only_constructs() -> None:
    text = json.dumps(schema.crd_openapi_schema())
    for keyword in ('"$ref"', '"$defs"', '"$schema"', '"title"', '"const"', '"patternProperties"', '"propertyNames"'):
        assert keyword not in text
    assert '"default": null' not in text
    assert '{"type": "null"}' not in text


def test_metadata_and_status_are_kubernetes_shaped() -> None:
    props = schema.crd_openapi_schema()["properties"]
    assert props["metadata"] == {"type": "object"}
    assert props["status"]["type"] == "object"
    assert props["status"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["apiVersion"]["type"] == props["kind"]["type"] == "string"


def _path(node: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        node = node["items"] if name == "[]" else node["properties"][name]
    return node


def test_number_or_string_fields_are_untyped_with_type_scoped_bounds() -> None:
    metric = _path(schema.crd_openapi_schema(), "spec", "analysis", "metrics", "[]")
    relative = _path(metric, "margin", "relative")
    assert "type" not in relative and "anyOf" not in relative
    assert relative["x-kubernetes-preserve-unknown-fields"] is True
    assert (relative["minimum"], relative["maximum"]) == (0, 1)
    assert relative["pattern"].endswith("%$")
    for name in ("max", "min"):
        bound = _path(metric, "slo", name)
        assert "type" not in bound and bound["x-kubernetes-preserve-unknown-fields"] is True
        assert bound["pattern"] == QUANTITY_PATTERN
        assert bound["description"].startswith("A duration")


def test_optional_fields_collapse_to_their_type_and_enums_survive() -> None:
    root = schema.crd_openapi_schema()
    assert _path(root, "spec", "routing", "timeout")["type"] == "string"
    assert _path(root, "spec", "strategy", "mirror")["type"] == "object"
    assert _path(root, "spec", "analysis", "metrics", "[]", "kind")["enum"] == [k.value for k in MetricKind]
    on_no_data = _path(root, "spec", "strategy", "onNoData")
    assert on_no_data["enum"] == [v.value for v in OnTimeout]
    assert on_no_data["default"] == "Pause"
    alpha = _path(root, "spec", "analysis", "alpha")
    assert (alpha["minimum"], alpha["exclusiveMinimum"], alpha["maximum"]) == (0, True, 0.5)
    labels = _path(root, "spec", "stable", "labels")
    assert labels["type"] == "object" and labels["additionalProperties"]["type"] == "string"


def _property_paths(node: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Field paths of a pydantic JSON Schema, following references and optional wrappers."""
    while "$ref" in node or "anyOf" in node:
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[1]]
        else:
            branches = [b for b in node["anyOf"] if b != {"type": "null"}]
            if len(branches) != 1:
                return
            node = branches[0]
    for name, sub in node.get("properties", {}).items():
        yield f"{prefix}.{name}"
        yield from _property_paths(sub, defs, f"{prefix}.{name}")
    if "items" in node:
        yield from _property_paths(node["items"], defs, f"{prefix}[]")
    for sub in node.get("patternProperties", {}).values():
        yield from _property_paths(sub, defs, f"{prefix}{{}}")


def _crd_paths(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for name, sub in node.get("properties", {}).items():
        yield f"{prefix}.{name}"
        yield from _crd_paths(sub, f"{prefix}.{name}")
    if "items" in node:
        yield from _crd_paths(node["items"], f"{prefix}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _crd_paths(node["additionalProperties"], f"{prefix}{{}}")


def test_the_crd_schema_has_every_field_of_the_model_and_no_other() -> None:
    raw = ModelRollout.model_json_schema(by_alias=True, mode="validation")
    model = {p for p in _property_paths(raw, raw["$defs"]) if not p.startswith(".metadata.")}
    assert set(_crd_paths(schema.crd_openapi_schema())) == model


def test_required_fields_match_the_model() -> None:
    spec = _path(schema.crd_openapi_schema(), "spec")
    assert spec["required"] == ["service", "stable", "canary", "analysis"]
    assert _path(spec, "service")["required"] == ["name", "port"]


@pytest.mark.parametrize(("name", "doc"), POLICIES, ids=[name for name, _ in POLICIES])
def test_the_crd_schema_accepts_every_example_policy(name: str, doc: dict[str, Any]) -> None:
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator().iter_errors(doc)]
    assert errors == [], name


def test_there_are_example_policies() -> None:
    assert len(POLICIES) >= 1
    assert FRAUD in POLICY_FILES


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_the_crd_schema_refuses_broken_policies(name: str) -> None:
    doc = broken(name)
    with pytest.raises(pydantic.ValidationError):
        ModelRollout.model_validate(doc)
    assert refuses(crd_validator(), doc), name


@pytest.mark.parametrize("value", [0.05, 0, 1, "2%", "2.5%", "100%"])
def test_fractions_as_numbers_or_percentages_are_accepted(value: float | str) -> None:
    doc = broken("unknown field in spec")
    del doc["spec"]["bogus"]
    doc["spec"]["analysis"]["metrics"][0]["margin"]["relative"] = value
    ModelRollout.model_validate(doc)
    assert not refuses(crd_validator(), doc)
    assert not refuses(editor_validator(), doc)


def test_status_written_by_the_controller_is_accepted() -> None:
    doc = copy.deepcopy(load_docs(FRAUD)[0])
    doc["status"] = {"phase": "Progressing", "canaryWeight": 5, "currentStep": 1, "conditions": [{"type": "Ready"}]}
    assert not refuses(crd_validator(), doc)
    assert not refuses(editor_validator(), doc)
    ModelRollout.model_validate(doc)


# --- the CRD ----------------------------------------------------------------------------------


def test_the_crd_names_and_version() -> None:
    crd = schema.crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}" == "modelrollouts.canarist.io"
    spec = crd["spec"]
    assert spec["group"] == GROUP and spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (KIND, PLURAL, "modelrollout")
    assert names["shortNames"] == ["mr", "mrs"] and names["categories"] == ["canarist"]
    [version] = spec["versions"]
    assert version["name"] == VERSION == "v1alpha1"
    assert version["served"] is True and version["storage"] is True
    assert version["subresources"] == {"status": {}}
    assert version["schema"]["openAPIV3Schema"] == schema.re2_escaped(schema.crd_openapi_schema())


def test_the_crd_patterns_name_non_yaml_characters_as_re2_escapes() -> None:
    """The API server's regexps are RE2: ``\\x{FEFF}`` there is the character the model's pattern
    holds. Written back as characters, the CRD's patterns are exactly the model's."""
    text = (ISTIO / schema.CRD_FILE).read_text(encoding="utf-8")
    assert text.isascii() and "\\x{FEFF}" in text and "\\x{FFFE}" in text and "\\x{FFFF}" in text
    [version] = schema.crd()["spec"]["versions"]
    back = json.loads(
        re.sub(
            r"\\\\x\{([0-9A-F]{4})\}",
            lambda m: "\\u" + m.group(1).lower(),
            json.dumps(version["schema"]["openAPIV3Schema"]),
        )
    )
    assert back == schema.crd_openapi_schema()


def test_the_crd_printer_columns() -> None:
    [version] = schema.crd()["spec"]["versions"]
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ("string", ".status.phase"),
        "Weight": ("integer", ".status.canaryWeight"),
        "Step": ("integer", ".status.currentStep"),
        "Stable": ("string", ".spec.stable.name"),
        "Canary": ("string", ".spec.canary.name"),
        "Age": ("date", ".metadata.creationTimestamp"),
    }
    root = version["schema"]["openAPIV3Schema"]
    for _, path in columns.values():
        top, *rest = path.lstrip(".").split(".")
        node = root["properties"][top]
        if node.get("x-kubernetes-preserve-unknown-fields") or top == "metadata":
            continue
        assert _path(node, *rest)["type"] == "string", path


# --- the converter on other shapes ------------------------------------------------------------


class _Child(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    size: int = pydantic.Field(default=3, ge=0)


class _Shapes(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    port: int | str
    free: dict[str, Any] = pydantic.Field(default_factory=dict)
    children: dict[str, _Child] = pydantic.Field(default_factory=dict)
    maybe: _Child | None = None


class _Tree(pydantic.BaseModel):
    children: list[_Tree] = pydantic.Field(default_factory=list)


class _Either(pydantic.BaseModel):
    value: _Child | list[int]


def test_the_converter_handles_int_or_string_free_form_and_maps() -> None:
    converted = schema.structural_schema(_Shapes.model_json_schema(by_alias=True, mode="validation"), "Shapes")
    assert structural_problems(converted) == []
    props = converted["properties"]
    assert props["port"]["x-kubernetes-int-or-string"] is True
    assert props["port"]["anyOf"] == INT_OR_STRING_ANY_OF
    assert props["free"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert props["children"]["additionalProperties"]["properties"]["size"] == {
        "type": "integer",
        "default": 3,
        "minimum": 0,
    }
    assert props["maybe"]["type"] == "object"


@pytest.mark.parametrize("model", [_Tree, _Either])
def test_the_converter_refuses_what_it_cannot_encode(model: type[pydantic.BaseModel]) -> None:
    with pytest.raises(schema.SchemaConversionError):
        schema.structural_schema(model.model_json_schema(by_alias=True, mode="validation"))


# --- the editor schema ------------------------------------------------------------------------


def test_the_editor_schema_is_valid_draft_2020_12() -> None:
    editor = schema.policy_json_schema()
    jsonschema.Draft202012Validator.check_schema(editor)
    assert editor["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert editor["$id"] == "https://canarist.io/schemas/v1alpha1/modelrollout.json"
    assert editor["title"] == "ModelRollout" and editor["description"]
    assert editor["properties"]["apiVersion"]["const"] == "canarist.io/v1alpha1"
    assert editor["properties"]["kind"]["const"] == "ModelRollout"
    assert "status" in editor["properties"] and "status" not in editor["required"]


def test_the_editor_schema_closes_every_object_the_model_closes() -> None:
    editor = schema.policy_json_schema()
    assert editor["additionalProperties"] is False
    for name, definition in editor["$defs"].items():
        if definition.get("type") == "object":
            assert definition.get("additionalProperties") is False, name


def test_the_editor_schema_has_no_null_defaults() -> None:
    assert '"default": null' not in schema.policy_json_schema_text()


@pytest.mark.parametrize(("name", "doc"), POLICIES, ids=[name for name, _ in POLICIES])
def test_the_editor_schema_accepts_every_example_policy(name: str, doc: dict[str, Any]) -> None:
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in editor_validator().iter_errors(doc)]
    assert errors == [], name


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_the_editor_schema_refuses_broken_policies(name: str) -> None:
    assert refuses(editor_validator(), broken(name)), name


@pytest.mark.parametrize("path", POLICY_FILES, ids=[p.name for p in POLICY_FILES])
def test_policy_modelines_point_at_the_editor_schema(path: Path) -> None:
    for match in re.finditer(r"yaml-language-server:\s*\$schema=(\S+)", path.read_text(encoding="utf-8")):
        target = (path.parent / match.group(1)).resolve()
        assert target == (ISTIO / schema.SCHEMA_FILE).resolve(), f"{path.name}: {match.group(1)}"
