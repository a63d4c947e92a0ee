"""JSON documents as the API server treats them: merge and JSON patches, label and field selectors, errors.

Pure functions over plain dicts, shared by :mod:`controller.localapi.server`.
"""

from __future__ import annotations

import copy
import re
from typing import Any

# fmt: off
REASONS = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict", 410: "Expired",
           415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
           503: "ServiceUnavailable", 504: "Timeout"}
# fmt: on


class ApiError(Exception):
    """An error answer: becomes a ``kind: Status`` object with this code and reason."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}
        self.reason = reason or REASONS.get(code, "Unknown")

    def status(self) -> dict[str, Any]:
        status = {"status": "Failure", "message": self.message, "reason": self.reason, "details": self.details}
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, **status, "code": self.code}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        try:
            doc = doc[int(part)] if isinstance(doc, list) else doc[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(422, f"JSON patch: path segment {part!r} does not exist") from None
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    if not isinstance(ops, list):
        raise ApiError(400, "a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)

    def add(parts: list[str], value: Any) -> None:
        nonlocal doc
        if not parts:
            doc = value
            return
        parent, last = _walk(doc, parts[:-1]), parts[-1]
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), value)
        else:
            parent[last] = value

    def remove(parts: list[str]) -> Any:
        parent, last = _walk(doc, parts[:-1]), parts[-1]
        _walk(parent, [last])
        return parent.pop(int(last) if isinstance(parent, list) else last)

    for op in ops:
        kind, parts = op.get("op"), _pointer(op.get("path", ""))
        if kind == "add":
            add(parts, copy.deepcopy(op["value"]))
        elif kind == "remove":
            remove(parts)
        elif kind == "replace":
            if parts:
                remove(parts)
            add(parts, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            source = _pointer(op["from"])
            value = remove(source) if kind == "move" else copy.deepcopy(_walk(doc, source))
            add(parts, value)
        elif kind == "test":
            if _walk(doc, parts) != op.get("value"):
                raise ApiError(422, f"JSON patch test failed at {op.get('path')!r}")
        else:
            raise ApiError(422, f"unknown JSON patch operation {kind!r}")
    return doc


_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"


def label_matcher(selector: str) -> list[tuple[str, str, set[str]]]:
    """Parse a label selector into (key, operator, values) requirements."""
    requirements: list[tuple[str, str, set[str]]] = []
    for term in (t.strip() for t in re.split(r",(?![^(]*\))", selector) if selector.strip()):
        if m := re.fullmatch(rf"({_KEY})\s+(in|notin)\s*\(([^)]*)\)", term):
            requirements.append((m[1], m[2], {v.strip() for v in m[3].split(",")}))
        elif m := re.fullmatch(rf"({_KEY})\s*(==|=|!=)\s*([-A-Za-z0-9_.]*)", term):
            requirements.append((m[1], "!=" if m[2] == "!=" else "=", {m[3]}))
        elif m := re.fullmatch(rf"!\s*({_KEY})", term):
            requirements.append((m[1], "!", set()))
        elif re.fullmatch(_KEY, term):
            requirements.append((term, "exists", set()))
        else:
            raise ApiError(400, f"unable to parse requirement: {term!r} in {selector!r}")
    return requirements


def selected(obj: dict[str, Any], labels: list[tuple[str, str, set[str]]], fields: dict[str, str]) -> bool:
    metadata = obj.get("metadata") or {}
    have = metadata.get("labels") or {}
    for key, op, values in labels:
        ok = {
            "=": key in have and have[key] in values,
            "in": key in have and have[key] in values,
            "!=": have.get(key) not in values,
            "notin": have.get(key) not in values,
            "exists": key in have,
            "!": key not in have,
        }[op]
        if not ok:
            return False
    return all(str(metadata.get(name.removeprefix("metadata."), "")) == value for name, value in fields.items())


def field_matcher(selector: str) -> dict[str, str]:
    out = {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        name, _, value = term.partition("=")
        name = name.rstrip("=")
        if name not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, f'field label not supported: "{name}"')
        out[name] = value.lstrip("=")
    return out
