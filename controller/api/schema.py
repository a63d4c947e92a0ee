"""Schemas derived from the policy model: one for editors, one for the Kubernetes API server.

Both come from :class:`controller.api.model.ModelRollout`, so the file a user edits, the CRD the API
server enforces and the model the controller loads cannot drift apart:

- :func:`policy_json_schema`: JSON Schema (draft 2020-12) for yaml-language-server, with ``$defs``
  and ``additionalProperties: false`` exactly as pydantic emits them.
- :func:`crd_openapi_schema`: the same model as a Kubernetes *structural* ``openAPIV3Schema``
  (OpenAPI 3.0 subset): references inlined, Optional collapsed (Kubernetes drops nulls instead),
  maps as ``additionalProperties``, boolean ``exclusiveMinimum``.
- :func:`crd`: the ``apiextensions.k8s.io/v1`` CustomResourceDefinition around it.

A number-or-string field (``Fraction``, ``Quantity``) cannot carry ``type`` in Kubernetes: a
structural schema forbids ``type`` under ``anyOf`` except for the exact
``[{type: integer}, {type: string}]`` pair of ``x-kubernetes-int-or-string``, and that extension
rejects 0.05. Such a node gets ``x-kubernetes-preserve-unknown-fields: true`` (which may omit
``type``) and the branches' keywords side by side: ``minimum``/``maximum`` bind numbers only and
``pattern``/``maxLength`` strings only, so ``0.05`` and ``'5%'`` pass and ``5`` or ``'abc'`` do not.
Keys of maps (label keys, header names) are not checked by the API server; the controller's
pydantic validation still refuses bad ones when it loads the rollout.

Everything here is pure; :func:`main` (``python -m controller.api.schema --write``) writes the files.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from controller.api.model import GROUP, KIND, PLURAL, VERSION, ModelRollout

JsonDict = dict[str, Any]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = f"https://canarist.io/schemas/{VERSION}/modelrollout.json"
CRD_NAME = f"{PLURAL}.{GROUP}"
SHORT_NAMES = ("mr", "mrs")
CATEGORIES = ("canarist",)
CRD_FILE = "crd.yaml"
SCHEMA_FILE = "modelrollout.schema.json"
REGENERATE = "python -m controller.api.schema --write"

_DESCRIPTION = (
    "A canarist ModelRollout: shifts traffic of an Istio-served model from a stable to a canary "
    "version step by step, promoting only when every metric is statistically no worse than stable."
)
_LABELS = {"app.kubernetes.io/name": "canarist", "app.kubernetes.io/part-of": "canarist"}

# Keywords of pydantic's output that carry over to a Kubernetes schema unchanged (OpenAPI 3.0 subset).
_PLAIN = frozenset(
    {"type", "description", "default", "enum", "required", "minimum", "maximum", "multipleOf"}
    | {"minLength", "maxLength", "pattern", "minItems", "maxItems", "minProperties", "maxProperties"}
)
# Dropped: annotations Kubernetes refuses or ignores; key constraints it cannot express.
_DROPPED = frozenset({"title", "$schema", "$comment", "examples", "propertyNames"})
_SCALAR_KEYWORDS = {
    "string": frozenset({"minLength", "maxLength", "pattern"}),
    "number": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}),
    "integer": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}),
}
_NULL = {"type": "null"}
# Key order in the emitted CRD, for a readable diff; anything else follows in pydantic's order.
_ORDER = (
    *("description", "type", "format", "enum", "default"),
    *("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength", "pattern"),
    *("minItems", "maxItems", "minProperties", "maxProperties"),
    *("required", "properties", "additionalProperties", "items", "anyOf"),
)


class SchemaConversionError(ValueError):
    """The model uses a schema construct that has no faithful structural-schema equivalent."""


def _model_schema() -> JsonDict:
    return ModelRollout.model_json_schema(by_alias=True, mode="validation")


# --- the editor schema ------------------------------------------------------------------------


def _tidy(node: Any, *, is_property: bool = False) -> Any:
    """Drop what only adds noise in an editor: ``default: null`` and titles derived from field names."""
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: JsonDict = {}
    for key, value in node.items():
        if (key == "default" and value is None) or (key == "title" and is_property):
            continue
        if key in ("properties", "patternProperties", "$defs"):
            out[key] = {name: _tidy(sub, is_property=key != "$defs") for name, sub in value.items()}
        else:
            out[key] = _tidy(value)
    return out


def policy_json_schema() -> JsonDict:
    """The JSON Schema (draft 2020-12) of a ModelRollout policy file, for editors."""
    body = _tidy(_model_schema())
    body.pop("title", None)
    body.pop("description", None)
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "$comment": f"Generated from controller/api/model.py by `{REGENERATE}`; do not edit.",
        "title": KIND,
        "description": _DESCRIPTION,
        **body,
    }


# --- the structural schema --------------------------------------------------------------------


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any], where: str, seen: tuple[str, ...]) -> JsonDict:
    """Inline a ``$ref`` (its siblings, e.g. a field's description or default, win)."""
    ref = node["$ref"]
    name = ref.removeprefix("#/$defs/")
    if name == ref or name not in defs:
        raise SchemaConversionError(f"{where}: unresolvable reference {ref!r}")
    if name in seen:
        raise SchemaConversionError(f"{where}: recursive reference to {name!r} cannot be inlined")
    siblings = {k: v for k, v in node.items() if k != "$ref"}
    return _structural({**defs[name], **siblings}, defs, where, (*seen, name))


def _exclusive(out: JsonDict, key: str, bound: str, value: Any, where: str) -> None:
    """Draft 2020-12 ``exclusiveMinimum: x`` becomes OpenAPI 3.0 ``minimum: x, exclusiveMinimum: true``."""
    if isinstance(value, bool):
        raise SchemaConversionError(f"{where}: unexpected boolean {key}")
    current = out.get(bound)
    stricter = current is None or (value >= current if bound == "minimum" else value <= current)
    if stricter:
        out[bound] = value
        out[key] = True


def _scalar_union(branches: Sequence[Any], where: str) -> JsonDict:
    """Encode ``anyOf`` of scalar types without ``type`` under ``anyOf`` (see the module docstring)."""
    types = [str(branch.get("type")) if isinstance(branch, dict) else repr(branch) for branch in branches]
    kinds = {"number" if t == "integer" else t for t in types}
    if len(types) != 2 or kinds != {"number", "string"}:
        raise SchemaConversionError(f"{where}: only a number-or-string union can be encoded, got {types}")
    out: JsonDict = {}
    for branch, kind in zip(branches, types, strict=True):
        extra = set(branch) - {"type"} - _SCALAR_KEYWORDS[kind]
        if extra:
            raise SchemaConversionError(f"{where}: cannot encode {sorted(extra)} in a {kind} branch of a union")
        for key, value in branch.items():
            if key in ("exclusiveMinimum", "exclusiveMaximum"):
                _exclusive(out, key, "minimum" if key == "exclusiveMinimum" else "maximum", value, where)
            elif key != "type":
                out[key] = value
    if "integer" in types:  # the one typed anyOf a structural schema allows
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        out["x-kubernetes-int-or-string"] = True
    else:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _structural(node: Any, defs: Mapping[str, Any], where: str, seen: tuple[str, ...] = ()) -> JsonDict:
    if not isinstance(node, dict):
        raise SchemaConversionError(f"{where}: expected a schema object, got {node!r}")
    if "$ref" in node:
        return _resolve(node, defs, where, seen)
    if "anyOf" in node:
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        branches = [branch for branch in node["anyOf"] if branch != _NULL]
        if len(branches) == 1:  # Optional[X]: Kubernetes omits the field rather than storing null
            return _structural({**branches[0], **rest}, defs, where, seen)
        return _ordered({**_structural(rest, defs, where, seen), **_scalar_union(branches, where)})
    out: JsonDict = {}
    for key, value in node.items():
        if key in _DROPPED or (key == "default" and value is None):
            continue
        if key in _PLAIN:
            out[key] = copy.deepcopy(value)  # no shared lists: YAML would emit anchors
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            _exclusive(out, key, "minimum" if key == "exclusiveMinimum" else "maximum", value, where)
        elif key == "items":
            out["items"] = _structural(value, defs, f"{where}[]", seen)
        elif key == "properties":
            out["properties"] = {name: _structural(sub, defs, f"{where}.{name}", seen) for name, sub in value.items()}
        elif key not in ("additionalProperties", "patternProperties"):
            raise SchemaConversionError(f"{where}: keyword {key!r} has no structural-schema equivalent")
    _structural_map(node, out, defs, where, seen)
    return _ordered(out)


def _ordered(node: JsonDict) -> JsonDict:
    rank = {key: index for index, key in enumerate(_ORDER)}
    return dict(sorted(node.items(), key=lambda item: rank.get(item[0], len(rank))))


def _structural_map(node: JsonDict, out: JsonDict, defs: Mapping[str, Any], where: str, seen: tuple[str, ...]) -> None:
    """Objects: closed ones rely on pruning; maps get ``additionalProperties``; free-form ones are kept."""
    extra = node.get("additionalProperties")
    patterns = node.get("patternProperties") or {}
    if "properties" in node:
        if extra not in (None, False) or patterns:
            raise SchemaConversionError(f"{where}: an object cannot have both properties and open keys")
        return
    if len(patterns) > 1 or (patterns and extra is not None):
        raise SchemaConversionError(f"{where}: a map must have a single value schema")
    if patterns:
        out["additionalProperties"] = _structural(next(iter(patterns.values())), defs, f"{where}{{}}", seen)
    elif isinstance(extra, dict) and extra:
        out["additionalProperties"] = _structural(extra, defs, f"{where}{{}}", seen)
    elif extra is True or extra == {} or (extra is None and node.get("type") == "object"):
        out["x-kubernetes-preserve-unknown-fields"] = True


def structural_schema(json_schema: Mapping[str, Any], name: str = KIND) -> JsonDict:
    """Convert a pydantic JSON Schema to a structural one; :class:`SchemaConversionError` if it cannot."""
    body = {key: value for key, value in json_schema.items() if key != "$defs"}
    return _structural(body, json_schema.get("$defs", {}), name)


def crd_openapi_schema() -> JsonDict:
    """The ModelRollout as a Kubernetes structural ``openAPIV3Schema``."""
    root = structural_schema(_model_schema())
    properties = root["properties"]
    properties["apiVersion"] = {
        "type": "string",
        "description": "The versioned schema of this object; the API server checks it.",
    }
    properties["kind"] = {"type": "string", "description": f"Always {KIND}."}
    properties["metadata"] = {"type": "object"}
    properties["status"] = {
        "description": "Observed state, written by the controller: phase, step, weights and the evidence behind them.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    return _ordered({**root, "description": _DESCRIPTION})


#: Characters YAML readers in Go (go-yaml, which kubectl's kustomize uses) refuse even escaped in a
#: quoted string: they are not YAML-printable. The CRD's patterns name some of them (the forbidden
#: characters of SAFE_TEXT), so there they are written as RE2 escapes (the API server's regexps).
_NOT_YAML_PRINTABLE = re.compile("[\ufeff\ufffe\uffff]")


def re2_escaped(node: Any) -> Any:
    """``node`` with every pattern's non-YAML-printable characters as RE2 ``\\x{HHHH}`` escapes."""
    if isinstance(node, dict):
        return {
            key: _NOT_YAML_PRINTABLE.sub(lambda m: f"\\x{{{ord(m.group()):04X}}}", value)
            if key == "pattern" and isinstance(value, str)
            else re2_escaped(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [re2_escaped(item) for item in node]
    return node


def crd() -> JsonDict:
    """The ``apiextensions.k8s.io/v1`` CustomResourceDefinition for ModelRollout."""
    columns = [
        ("Phase", "string", ".status.phase", "Where the rollout is."),
        ("Weight", "integer", ".status.canaryWeight", "Percent of traffic on the canary."),
        ("Step", "integer", ".status.currentStep", "Index of the current step."),
        ("Stable", "string", ".spec.stable.name", "The stable version."),
        ("Canary", "string", ".spec.canary.name", "The canary version."),
        ("Age", "date", ".metadata.creationTimestamp", None),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": dict(_LABELS)},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": name, "type": kind, "jsonPath": path, **({"description": text} if text else {})}
                        for name, kind, path, text in columns
                    ],
                    "schema": {"openAPIV3Schema": re2_escaped(crd_openapi_schema())},
                }
            ],
        },
    }


# --- the checked-in files ---------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def crd_yaml() -> str:
    header = f"# Generated from controller/api/model.py by `{REGENERATE}`; do not edit.\n"
    # ASCII only: the patterns name invisible characters (separators, bidirectional controls), which
    # must show as escapes in the file, not hide in it.
    return header + yaml.dump(crd(), Dumper=_Dumper, sort_keys=False, allow_unicode=False, width=100)


def policy_json_schema_text() -> str:
    return json.dumps(policy_json_schema(), indent=2, ensure_ascii=True) + "\n"  # escapes, as crd_yaml


def generated_files() -> dict[str, str]:
    """File name under ``istio/`` -> the exact text it must hold."""
    return {CRD_FILE: crd_yaml(), SCHEMA_FILE: policy_json_schema_text()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.api.schema", description="Print or write the schemas.")
    parser.add_argument("--write", action="store_true", help=f"write {CRD_FILE} and {SCHEMA_FILE}")
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parents[2] / "istio")
    args = parser.parse_args(argv)
    if not args.write:
        sys.stdout.write(crd_yaml())
        return 0
    for name, text in generated_files().items():
        (args.dir / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
