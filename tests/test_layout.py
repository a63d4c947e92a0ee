"""The house rules of the package's layout that import-linter cannot see."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "controller"
MODULES = sorted(PACKAGE.rglob("*.py"))
#: Turn policy text ('1m', '5%', '250ms') into numbers: only the resource model may call them.
PARSERS = {"parse_duration", "parse_value", "parse_fraction"}
#: What people type on the command line is not policy text: the CLI reads its flags with them too.
MAY_PARSE = {PACKAGE / "api", PACKAGE / "cli"}


def test_no_module_is_over_500_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"split these by concern: {long}"


def test_policy_text_becomes_a_number_only_in_the_resource_model() -> None:
    calls = {
        f"{p.relative_to(PACKAGE)}:{node.lineno}"
        for p in MODULES
        if not MAY_PARSE & set(p.parents)
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name | ast.Attribute)
        and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) in PARSERS
    }
    assert MODULES and not calls, f"read the number from controller.api (a property, api.kinds), not the text: {calls}"
