"""One validator for a stored rollout object: the reconcile, `status` and `report` judge it as a file is judged."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.load import PolicyError, from_object, load
from controller.engine.reconcile import parse

POLICIES = sorted((Path(__file__).resolve().parent.parent / "policies").glob("*.yaml"))
SERVER_SET = {
    "uid": "0b5e8f9e-0000-4000-8000-000000000000",
    "resourceVersion": "42",
    "creationTimestamp": "2026-12-03T16:00:00Z",
    "managedFields": [{"manager": "kubectl", "operation": "Update"}],
    "finalizers": ["canarist.io/restore-routes"],
}


def stored(document: dict[str, Any]) -> dict[str, Any]:
    """The document as the API server returns it: server-set metadata and a status added."""
    obj = copy.deepcopy(document)
    obj["metadata"] = {**obj["metadata"], **SERVER_SET, "generation": 3}
    obj["status"] = {"phase": "Progressing", "currentStep": 1}
    return obj


@pytest.mark.parametrize("path", POLICIES, ids=[p.name for p in POLICIES])
def test_a_stored_example_is_the_policy_its_file_is(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for document, from_file in zip(
        (d for d in yaml.safe_load_all(text) if d), load(text, str(path), ignore_other_kinds=True), strict=False
    ):
        rollout, problem = from_object(stored(document))
        assert problem == "" and rollout is not None
        assert rollout.spec == from_file.spec and rollout.metadata.name == from_file.metadata.name
        assert parse(stored(document)) == (rollout, "")


SPEC_EDITS = st.sampled_from(
    [
        ("strategy", "steps", [150]),
        ("strategy", "steps", "ten"),
        ("analysis", "interval", "soon"),
        ("analysis", "alpha", 2),
        ("service", "name", "Not A DNS Label"),
        ("analysis", "metrics", []),
        ("canary", "name", None),
    ]
)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(POLICIES), SPEC_EDITS)
def test_a_bad_spec_is_one_line_naming_its_field_whoever_reads_it(path: Path, edit: tuple[str, str, Any]) -> None:
    document = next(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    section, field, value = edit
    document["spec"].setdefault(section, {})[field] = value
    try:
        load(yaml.safe_dump(document), "f.yaml")
    except PolicyError:
        refused_as_file = True
    else:
        refused_as_file = False
    rollout, problem = from_object(stored(document))
    assert (rollout is None) == refused_as_file
    if rollout is None:
        assert "\n" not in problem and problem.split(":")[0].split(".")[0] in {"spec", "metadata"}
    assert parse(stored(document)) == (rollout, problem)


def test_a_spec_too_deep_to_validate_is_a_problem_not_an_exception() -> None:
    deep: Any = "x"
    for _ in range(3000):
        deep = [deep]
    rollout, problem = from_object({"metadata": {"name": "deep"}, "spec": {"strategy": {"steps": deep}}})
    assert rollout is None and problem
