"""The ``canarist`` command line: render, steps, --version, ``python -m controller``, exit codes.

Happy paths run in-process (click's CliRunner) to stay fast; error paths that promise "one line
on stderr, exit status 2, never a traceback" run the real executable so nothing can hide.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from controller import __version__
from controller.api.load import load
from controller.api.model import ModelRollout
from controller.api.names import WEIGHT_ANNOTATION
from controller.api.routing import RoutingMode
from controller.api.schedule import schedule, split_tagged
from controller.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
TEMPLATES = ROOT / "templates"
EXAMPLES = sorted(POLICIES.glob("*.yaml"))
FRAUD = POLICIES / "fraud-detector-istio.yaml"
OCR = POLICIES / "ocr-triton-versions.yaml"
CANARIST = Path(sys.executable).parent / "canarist"
EXIT_INVALID = 2


def rollout_of(path: Path) -> ModelRollout:
    [rollout] = load(path.read_text(encoding="utf-8"), str(path))
    return rollout


ROLLOUTS = {path.name: rollout_of(path) for path in EXAMPLES}


def invoke(*args: str) -> Result:
    """Run the CLI in-process; any exception other than an exit is a crash."""
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"canarist {' '.join(args)} raised {result.exception!r}\n{result.output}")
    return result


def run_canarist(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CANARIST), *args], capture_output=True, text=True, timeout=60, check=False)


def assert_one_line_error(proc: subprocess.CompletedProcess[str] | Result, fragment: str) -> str:
    """Exit 2, nothing on stdout, exactly one non-empty line on stderr containing ``fragment``."""
    stdout, stderr = proc.stdout, proc.stderr
    code = proc.returncode if isinstance(proc, subprocess.CompletedProcess) else proc.exit_code
    assert code == EXIT_INVALID, f"exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stdout + stderr, stderr
    assert stdout == "", stdout
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert fragment in lines[0], lines[0]
    return lines[0]


# --- render: every example at every step, in both formats --------------------------------------


def _render_points() -> list[Any]:
    points = []
    for path in EXAMPLES:
        plan = schedule(ROLLOUTS[path.name])
        for k in range(len(plan) + 1):
            weight = plan[k].canary_weight if k < len(plan) else 100
            mirror = plan[k].mirror_percent if k < len(plan) else 0.0
            for output in ("yaml", "json"):
                points.append(
                    pytest.param(path, ["--step", str(k)], weight, mirror, output, id=f"{path.stem}-step{k}-{output}")
                )
        for weight in (0, 50, 100):
            for output in ("yaml", "json"):
                points.append(
                    pytest.param(
                        path, ["--weight", str(weight)], weight, 0.0, output, id=f"{path.stem}-w{weight}-{output}"
                    )
                )
    return points


def parse_output(text: str, output: str) -> list[dict[str, Any]]:
    if output == "json":
        listing = json.loads(text)
        assert listing["apiVersion"] == "v1"
        assert listing["kind"] == "List"
        assert isinstance(listing["items"], list)
        return list(listing["items"])
    assert text.startswith("---\n"), text[:80]
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _route(virtual_service: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in virtual_service["spec"]["http"] if r.get("name") == name), None)


@pytest.mark.parametrize(("policy", "args", "weight", "mirror", "output"), _render_points())
def test_render(policy: Path, args: list[str], weight: int, mirror: float, output: str) -> None:
    rollout = ROLLOUTS[policy.name]
    result = invoke("render", str(policy), *args, "-o", output)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    objects = parse_output(result.stdout, output)
    tag = ["Telemetry"] if split_tagged(rollout) else []  # with A/B cohorts: the randomised split's tag
    assert [o["kind"] for o in objects] == ["DestinationRule", *tag, "VirtualService"]  # make before break
    rule, service = objects[0], objects[-1]
    for obj in (rule, service):
        assert obj["apiVersion"] == "networking.istio.io/v1"
        assert obj["metadata"]["name"] == rollout.metadata.name
        assert obj["metadata"]["namespace"] == rollout.metadata.namespace
    assert service["metadata"]["annotations"][WEIGHT_ANNOTATION] == str(weight)
    assert "annotations" not in rule["metadata"]  # a step rewrites only the VirtualService
    assert rule["spec"]["host"] == rollout.host
    assert service["spec"]["hosts"][0] == rollout.host
    if rollout.spec.routing.mode is RoutingMode.SUBSET:
        assert [s["name"] for s in rule["spec"]["subsets"]] == [rollout.spec.stable.name, rollout.spec.canary.name]
        primary = _route(service, "primary")
        assert primary is not None
        split = {d["destination"]["subset"]: d["weight"] for d in primary["route"]}
        assert split == {rollout.spec.stable.name: 100 - weight, rollout.spec.canary.name: weight}
        if mirror:
            assert primary["mirror"]["subset"] == rollout.spec.canary.name
            assert primary["mirrorPercentage"] == {"value": mirror}
        else:
            assert "mirror" not in primary
    else:
        assert "subsets" not in rule["spec"]
        names = [r["name"] for r in service["spec"]["http"]]
        assert names[-1] == "passthrough"
        assert ("canary-share" in names) == (weight > 0)
        assert ("stable-share" in names) == (weight < 100)


@pytest.mark.parametrize("policy", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_render_defaults_to_the_first_step(policy: Path) -> None:
    default = invoke("render", str(policy))
    first = invoke("render", str(policy), "--step", "0", "-o", "yaml")
    assert default.exit_code == first.exit_code == 0
    assert default.stdout == first.stdout


@pytest.mark.parametrize("policy", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_render_json_and_yaml_agree(policy: Path) -> None:
    as_yaml = parse_output(invoke("render", str(policy), "--step", "1").stdout, "yaml")
    as_json = parse_output(invoke("render", str(policy), "--step", "1", "-o", "json").stdout, "json")
    assert as_yaml == as_json


def test_render_is_deterministic() -> None:
    first = invoke("render", str(OCR), "--weight", "37", "-o", "json")
    second = invoke("render", str(OCR), "--weight", "37", "-o", "json")
    assert first.exit_code == 0
    assert first.stdout == second.stdout


def test_render_every_document_of_a_multi_document_file(tmp_path: Path) -> None:
    text = FRAUD.read_text()
    path = tmp_path / "two.yaml"
    path.write_text(text + "---\n" + text.replace("name: fraud-detector\n  namespace", "name: second\n  namespace"))
    result = invoke("render", str(path), "-o", "json", "--weight", "5")
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)["items"]
    assert [(o["kind"], o["metadata"]["name"]) for o in items] == [
        ("DestinationRule", "fraud-detector"),
        ("VirtualService", "fraud-detector"),
        ("DestinationRule", "second"),
        ("VirtualService", "second"),
    ]


def test_render_through_the_executable() -> None:
    proc = run_canarist("render", str(FRAUD), "--step", "2", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    items = json.loads(proc.stdout)["items"]
    assert items[1]["metadata"]["annotations"][WEIGHT_ANNOTATION] == "25"


# --- render: bad input -------------------------------------------------------------------------


def _invalid_policy(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(FRAUD.read_text().replace("interval: 1m", "interval: 5 m"))
    return path


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(["--weight", "10", "--step", "1"], "give --weight or --step, not both", id="weight-and-step"),
        pytest.param(["--step", "5"], "step 5 is out of range: this rollout has steps 0..4", id="step-past-promoted"),
        pytest.param(["--step", "99"], "out of range", id="step-99"),
        pytest.param(["--weight", "101"], "101", id="weight-101"),
        pytest.param(["--weight", "-1"], "-1", id="weight-negative"),
        pytest.param(["--step", "-1"], "-1", id="step-negative"),
        pytest.param(["--weight", "half"], "half", id="weight-not-a-number"),
        pytest.param(["-o", "toml"], "toml", id="unknown-output-format"),
    ],
)
def test_render_bad_arguments(args: list[str], fragment: str) -> None:
    proc = run_canarist("render", str(FRAUD), *args)
    assert_one_line_error(proc, fragment)


def test_render_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    line = assert_one_line_error(run_canarist("render", str(missing)), str(missing))
    assert re.match(rf"^{re.escape(str(missing))}:1:1: .*(No such file|no such file)", line), line


def test_render_invalid_policy(tmp_path: Path) -> None:
    path = _invalid_policy(tmp_path)
    line = assert_one_line_error(run_canarist("render", str(path), "--step", "1"), "spec.strategy.interval")
    assert line.startswith(f"{path}:46:5: spec.strategy.interval: must be a duration")


def test_render_policy_that_is_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe not utf-8")
    assert_one_line_error(run_canarist("render", str(path)), "not UTF-8")


# --- render: user templates ---------------------------------------------------------------------


def _templates(tmp_path: Path, name: str | None = None, old: str = "", new: str = "") -> Path:
    """A copy of the shipped templates, with ``old`` replaced by ``new`` in template ``name``."""
    copy = tmp_path / "templates"
    shutil.copytree(TEMPLATES, copy)
    if name is not None:
        path = copy / name
        text = path.read_text()
        assert text.count(old) >= 1, f"{old!r} not in {name}"
        path.write_text(text.replace(old, new, 1))
    return copy


def test_render_with_an_unchanged_copy_of_the_templates(tmp_path: Path) -> None:
    copy = _templates(tmp_path)
    ours = invoke("render", str(FRAUD), "--step", "1", "--templates", str(copy))
    shipped = invoke("render", str(FRAUD), "--step", "1")
    assert ours.exit_code == 0, ours.output
    assert ours.stdout == shipped.stdout


@pytest.mark.parametrize(
    ("name", "old", "new", "fragments"),
    [
        pytest.param(
            "destinationrule.yaml.j2",
            "{{ host | q }}",
            "{{ hostname | q }}",
            ["destinationrule.yaml.j2", "'hostname' is undefined"],
            id="undefined-in-destinationrule",
        ),
        pytest.param(
            "virtualservice.yaml.j2",
            "{{ hosts | q }}",
            "{{ all_hosts | q }}",
            ["virtualservice.yaml.j2", "'all_hosts' is undefined"],
            id="undefined-in-virtualservice",
        ),
        pytest.param(
            "virtualservice.yaml.j2",
            "{{ hosts | q }}",
            "{{ hosts | quote }}",
            ["virtualservice.yaml.j2", "quote"],
            id="unknown-filter",
        ),
        pytest.param(
            "_route.yaml.j2",
            "{{ destination | q }}",
            "{{ destinaton | q }}",
            ["_route.yaml.j2", "'destinaton' is undefined"],
            id="undefined-in-imported-macro",
        ),
        pytest.param(
            "_route.yaml.j2",
            "{% endmacro %}",
            "{% endmacr %}",
            ["_route.yaml.j2", "endmacr"],
            id="syntax-error-in-imported-macro",
        ),
        pytest.param(
            "destinationrule.yaml.j2",
            "spec:\n",
            "spec: [\n",
            ["destinationrule.yaml.j2", "invalid YAML"],
            id="template-makes-invalid-yaml",
        ),
        pytest.param(
            "_route.yaml.j2",
            "weight: {{ weight | q }}",
            "weight: {{ (weight + 1) | q }}",
            ["sum to"],
            id="template-breaks-weight-invariant",
        ),
    ],
)
def test_render_with_a_broken_template(tmp_path: Path, name: str, old: str, new: str, fragments: list[str]) -> None:
    copy = _templates(tmp_path, name, old, new)
    result = invoke("render", str(FRAUD), "--step", "1", "--templates", str(copy))
    line = assert_one_line_error(result, fragments[0])
    assert line.startswith("canarist: error: "), line
    for fragment in fragments[1:]:
        assert fragment in line, line


def test_render_broken_template_through_the_executable(tmp_path: Path) -> None:
    copy = _templates(tmp_path, "destinationrule.yaml.j2", "{{ namespace | q }}", "{{ nmespace | q }}")
    proc = run_canarist("render", str(OCR), "--templates", str(copy))
    line = assert_one_line_error(proc, "destinationrule.yaml.j2")
    assert "'nmespace' is undefined" in line


def test_render_templates_directory_without_templates(tmp_path: Path) -> None:
    assert_one_line_error(invoke("render", str(FRAUD), "--templates", str(tmp_path)), "no canarist templates")


def test_render_templates_directory_missing_the_macros(tmp_path: Path) -> None:
    copy = _templates(tmp_path)
    (copy / "_route.yaml.j2").unlink()
    assert_one_line_error(invoke("render", str(FRAUD), "--templates", str(copy)), "_route.yaml.j2")


# --- steps ---------------------------------------------------------------------------------------


def test_steps_of_the_fraud_detector() -> None:
    result = invoke("steps", str(FRAUD))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "ml-serving/fraud-detector:",
        "  step 0: canary 1% (live)",
        "  step 1: canary 5% (live)",
        "  step 2: canary 25% (live)",
        "  step 3: canary 50% (live)",
        "  step 4: canary 100% (promoted)",
    ]


def test_steps_with_a_shadow_phase() -> None:
    result = invoke("steps", str(POLICIES / "search-embedder-ab.yaml"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:4] == [
        "  step 0: canary 0%, mirror 50% (shadow)",
        "  step 1: canary 0%, mirror 50% (shadow)",
        "  step 2: canary 5% (live)",
    ]


@pytest.mark.parametrize("policy", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_steps_match_the_schedule(policy: Path) -> None:
    rollout = ROLLOUTS[policy.name]
    plan = schedule(rollout)
    result = invoke("steps", str(policy))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{rollout.key}:"
    assert len(lines) == len(plan) + 2
    for step, line in zip(plan, lines[1:], strict=False):
        assert line.startswith(f"  step {step.index}: canary {step.canary_weight}%")
    assert lines[-1] == f"  step {len(plan)}: canary 100% (promoted)"


def test_steps_with_step_weight() -> None:
    result = invoke("steps", str(POLICIES / "recsys-ranker-triton.yaml"))
    weights = [int(m) for m in re.findall(r"canary (\d+)%", result.stdout)]
    assert weights == [10, 20, 30, 40, 50, 100]


def test_steps_invalid_policy(tmp_path: Path) -> None:
    path = _invalid_policy(tmp_path)
    assert_one_line_error(run_canarist("steps", str(path)), f"{path}:46:5: spec.strategy.interval:")


def test_steps_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(invoke("steps", str(tmp_path / "nope.yaml")), "nope.yaml:1:1:")


# --- version and entry points ----------------------------------------------------------------------


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"canarist, version {__version__}\n"


def test_version_through_the_executable() -> None:
    proc = run_canarist("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"canarist, version {__version__}"


def test_python_dash_m_controller_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "controller", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: ")
    for command in ("validate", "render", "schema", "steps"):
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.MULTILINE), proc.stdout


@pytest.mark.parametrize("command", ["validate", "render", "schema", "steps"])
def test_command_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: cli {command}") or result.stdout.startswith("Usage: ")


def test_unknown_command() -> None:
    proc = run_canarist("deploy")
    assert proc.returncode == EXIT_INVALID
    assert "Traceback" not in proc.stderr
    assert "deploy" in proc.stderr
