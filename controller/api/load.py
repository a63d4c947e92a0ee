"""Turn policy text into validated ModelRollout values, or into diagnostics a human can act on.

Every problem becomes one :class:`Diagnostic` — ``file:line:col: spec.path: reason`` — whether it
is a YAML syntax error, an unknown field, a bad value or a cross-field rule. Hostile input is cut
short: files over :data:`MAX_BYTES`, YAML aliases (the "billion laughs" bomb), and absurd nesting
are refused before anything expands. Pure: the caller reads the file.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from controller.api import rules
from controller.api.fields import (
    COOKIE_TOKEN,
    DNS_LABEL,
    GATEWAY,
    HEADER_NAME,
    HOST,
    LABEL_KEY,
    LABEL_VALUE,
    PROM_LABEL_NAME,
    PROM_METRIC_NAME,
    REGEX_TEXT,
    SAFE_TEXT,
)
from controller.api.model import API_VERSION, KIND, ModelRollout
from controller.api.rules import Path
from controller.api.text import escaped
from controller.api.units import DURATION_PATTERN

MAX_BYTES = 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64


_PATTERN_HELP = {
    DNS_LABEL: "must be a DNS-1123 label: lowercase letters, digits and '-', at most 63 characters",
    HOST: "must be a DNS host name (lowercase letters, digits, '-' and '.'), optionally starting with '*.'",
    GATEWAY: "must be 'mesh' or a gateway name, optionally as 'namespace/name'",
    LABEL_KEY: "must be a Kubernetes label key ([prefix/]name: letters, digits, '-', '_' and '.')",
    LABEL_VALUE: "must be a Kubernetes label value: letters, digits, '-', '_' and '.', at most 63 characters",
    PROM_METRIC_NAME: "must be a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)",
    PROM_LABEL_NAME: "must be a Prometheus label name ([a-zA-Z][a-zA-Z0-9_]*)",
    HEADER_NAME: "must be a lowercase HTTP header name (letters, digits and '-')",
    COOKIE_TOKEN: "may contain only letters, digits, '_', '.' and '-', starting with a letter or digit",
    SAFE_TEXT: (
        "must not contain quotes, backslashes, braces or control characters (nor line separators, "
        "bidirectional controls, a byte-order mark or Unicode non-characters)"
    ),
    REGEX_TEXT: (
        "must not contain control characters, line separators, bidirectional controls, a byte-order mark "
        "or Unicode non-characters: write them as escapes such as \\x85"
    ),
    DURATION_PATTERN: "must be a duration with a unit, such as '500ms', '30s', '5m' or '1h30m'",
}


@dataclass(frozen=True)
class Diagnostic:
    """One problem in one file, located as precisely as the YAML allows."""

    source: str
    line: int
    column: int
    field: str
    reason: str

    def __str__(self) -> str:
        """One printable line: user text in the field path or the reason is escaped, long text cut."""
        field = f" {escaped(self.field, 200)}:" if self.field else ""
        return f"{escaped(self.source, 300)}:{self.line}:{self.column}:{field} {escaped(self.reason, 500)}"


class PolicyError(Exception):
    """A policy file was refused; ``diagnostics`` holds every reason."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__("\n".join(str(d) for d in diagnostics))
        self.diagnostics = diagnostics


@dataclass(frozen=True)
class Document:
    """One YAML document: its plain data and where each field path starts in the text."""

    data: Any
    positions: dict[Path, tuple[int, int]]


def load(text: str, source: str, *, ignore_other_kinds: bool = False) -> list[ModelRollout]:
    """Parse and validate every ModelRollout in ``text``; raise PolicyError with all problems.

    With ``ignore_other_kinds``, documents that are plainly not ModelRollouts (another kind and
    another API group) are skipped, so a pre-commit hook can be pointed at every YAML file.
    """
    documents = parse_yaml(text, source)
    if ignore_other_kinds:
        documents = [d for d in documents if not _other_kind(d.data)]
        if not documents:
            return []
    if not documents:
        raise PolicyError([Diagnostic(source, 1, 1, "", "no ModelRollout document in this file")])
    rollouts: list[ModelRollout] = []
    diagnostics: list[Diagnostic] = []
    for doc in documents:
        try:
            rollouts.append(validate(doc, source))
        except PolicyError as exc:
            diagnostics.extend(exc.diagnostics)
    if diagnostics:
        raise PolicyError(diagnostics)
    return rollouts


def _other_kind(data: Any) -> bool:
    if not isinstance(data, dict):
        return True
    api_version, kind = str(data.get("apiVersion", "")), data.get("kind")
    return kind != "ModelRollout" and not api_version.startswith("canarist.io/")


def validate(doc: Document, source: str) -> ModelRollout:
    """Validate one parsed document: structure first, then the cross-field rules."""
    if not isinstance(doc.data, dict):
        line, col = doc.positions.get((), (1, 1))
        raise PolicyError([Diagnostic(source, line, col, "", "a policy document must be a mapping")])
    try:
        rollout = ModelRollout.model_validate(doc.data)
        problems = rules.check(rollout)
    except ValidationError as exc:
        raise PolicyError(_structural(exc, doc, source)) from None
    except (RecursionError, MemoryError, OverflowError) as exc:  # a validator's bug must not stop the caller
        reason = f"too complex to validate ({type(exc).__name__})"
        raise PolicyError([Diagnostic(source, 1, 1, "", reason)]) from None
    if problems:
        raise PolicyError([_locate(doc, source, p.path, p.dotted, p.reason) for p in problems])
    return rollout


#: What a stored object's metadata contributes to its policy; the rest is the server's.
OBJECT_METADATA = ("name", "namespace", "labels", "annotations", "generation")


def from_object(obj: Mapping[str, Any]) -> tuple[ModelRollout | None, str]:
    """A ModelRollout object as the API stores it (read from a cluster, or exported to a file)
    validated as a policy file is: the model, then the cross-field rules. The rollout, or None and
    the first problem in one line (``field.path: reason``). The one validator of stored objects:
    the reconcile, ``status`` and ``report`` judge an object alike."""
    metadata = obj.get("metadata")
    kept = {k: metadata[k] for k in OBJECT_METADATA if k in metadata} if isinstance(metadata, Mapping) else {}
    body = {"apiVersion": API_VERSION, "kind": KIND, **obj, "metadata": {"name": "unnamed", **kept}}
    try:
        rollout = ModelRollout.model_validate(body)
        problems = rules.check(rollout)
    except ValidationError as exc:
        first = exc.errors()[0]
        return None, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    except (RecursionError, MemoryError, OverflowError) as exc:  # a validator's bug must not stop the caller
        return None, f"spec: too complex to validate ({type(exc).__name__})"
    return (None, str(problems[0])) if problems else (rollout, "")


def parse_yaml(text: str, source: str, *, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES) -> list[Document]:
    """Compose YAML into plain data with positions; refuse what could hang or mislead us.

    Aliases are refused, not expanded, so what is built is never larger than the text itself.
    """
    if len(text.encode("utf-8", errors="replace")) > max_bytes:
        raise PolicyError([Diagnostic(source, 1, 1, "", f"file is larger than {max_bytes // 1024} KiB")])
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.reader.ReaderError as exc:
        line, col = _line_col(text, exc.position)
        reason = f"invalid character {chr(exc.character)!r}" if isinstance(exc.character, int) else exc.reason
        raise PolicyError([Diagnostic(source, line, col, "", f"invalid YAML: {reason}")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise PolicyError([Diagnostic(source, line, col, "", f"invalid YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PolicyError([Diagnostic(source, 1, 1, "", f"invalid YAML: {first}")]) from None
    except RecursionError:
        raise PolicyError([Diagnostic(source, 1, 1, "", "YAML is nested too deeply")]) from None
    documents = []
    for node in nodes:
        if node is None:
            continue
        builder = _Builder(source, max_nodes)
        data = builder.build(node, (), 0)
        if data is not None:
            documents.append(Document(data, builder.positions))
    return documents


def _line_col(text: str, position: int) -> tuple[int, int]:
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


class _Builder:
    """Turns a composed YAML node tree into plain data, recording where each path starts."""

    def __init__(self, source: str, max_nodes: int = MAX_NODES) -> None:
        self.source = source
        self.max_nodes = max_nodes
        self.positions: dict[Path, tuple[int, int]] = {}
        self.seen: set[int] = set()
        self.constructor = yaml.constructor.SafeConstructor()

    def fail(self, node: yaml.Node, reason: str) -> PolicyError:
        mark = node.start_mark
        return PolicyError([Diagnostic(self.source, mark.line + 1, mark.column + 1, "", reason)])

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        if id(node) in self.seen:
            raise self.fail(node, "YAML anchors and aliases are not allowed")
        self.seen.add(id(node))
        if len(self.seen) > self.max_nodes:
            raise self.fail(node, f"more than {self.max_nodes} YAML nodes")
        if depth > MAX_DEPTH:
            raise self.fail(node, f"nested deeper than {MAX_DEPTH} levels")
        self.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            if node.tag != "tag:yaml.org,2002:map":
                raise self.fail(node, f"unsupported YAML tag {node.tag!r}")
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    raise self.fail(key_node, "mapping keys must be plain strings")
                key = key_node.value
                if key in out:
                    raise self.fail(key_node, f"duplicate key {key!r}")
                self.positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key] = self.build(value_node, (*path, key), depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                raise self.fail(node, f"unsupported YAML tag {node.tag!r}")
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        if node.tag in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"):
            return node.value  # keep RFC 3339 timestamps as the strings Kubernetes uses
        if node.tag not in self.constructor.yaml_constructors:
            raise self.fail(node, f"unsupported YAML tag {node.tag!r}")
        return self.constructor.construct_object(node)


def _structural(exc: ValidationError, doc: Document, source: str) -> list[Diagnostic]:
    out: dict[str, Diagnostic] = {}
    for error in exc.errors():
        path = _data_path(doc.data, error["loc"], error["type"])
        dotted = rules.Problem(path, "").dotted
        reason = _reason(error, path)
        if dotted not in out:
            out[dotted] = _locate(doc, source, path, dotted, reason)
    return list(out.values())


def _data_path(data: Any, loc: tuple[str | int, ...], kind: str) -> Path:
    """The part of pydantic's ``loc`` that names real fields (union branch tags are dropped)."""
    path: list[str | int] = []
    current = data
    for i, part in enumerate(loc):
        present = (isinstance(current, dict) and part in current) or (
            isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        )
        if present:
            current = current[part]
            path.append(part)
        elif kind == "missing" and i == len(loc) - 1:
            path.append(part)
    return tuple(path)


def _reason(error: Any, path: Path) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        reason = "unknown field"
        known = _known_fields(path[:-1])
        close = difflib.get_close_matches(str(path[-1]), known, n=1, cutoff=0.6) if path else []
        return f"{reason} (did you mean {close[0]!r}?)" if close else reason
    if kind == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern", "")
        return _PATTERN_HELP.get(pattern, f"does not match the pattern {pattern}")
    if kind == "literal_error":
        return f"must be {error['ctx']['expected']}"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return message[0].lower() + message[1:] if message else kind


def _locate(doc: Document, source: str, path: Path, dotted: str, reason: str) -> Diagnostic:
    """Place a problem at the deepest path prefix that exists in the text."""
    for end in range(len(path), -1, -1):
        if path[:end] in doc.positions:
            line, col = doc.positions[path[:end]]
            return Diagnostic(source, line, col, dotted, reason)
    return Diagnostic(source, 1, 1, dotted, reason)


def _known_fields(path: Path) -> list[str]:
    """The wire names of the fields allowed at ``path``, for "did you mean" hints."""
    annotation: Any = ModelRollout
    for part in path:
        annotation = _unwrap(annotation)
        origin = typing.get_origin(annotation)
        if origin is list or origin is dict:
            annotation = typing.get_args(annotation)[-1]  # a list index or a map key: step into the item
            continue
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        field = next((f for n, f in annotation.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        annotation = field.annotation
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [f.alias or n for n, f in annotation.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``Optional`` so what is left is a model, a list, a dict or a scalar."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            models = [a for a in args if typing.get_origin(a) in (list, dict) or isinstance(a, type)]
            annotation = next(
                (a for a in models if typing.get_origin(a) in (list, dict) or issubclass(a, BaseModel)), args[0]
            )
        else:
            return annotation
