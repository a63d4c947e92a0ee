"""``canarist demo`` end to end, every scenario, at high speed: real model servers, haproxy, Prometheus,
the load generator with late labels, and the controller against the local API stand-in.

Each run is checked for its outcome and the reason's metric, that haproxy's actual split followed
the weights in force, that no request failed because of a routing change, that every process the
demo started is gone, and that the report's PNGs are real images.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matplotlib import image

from controller.api.times import parse_timestamp
from controller.sandbox.demo.run import DemoOptions, DemoResult, run_demo
from controller.sandbox.demo.scenarios import CANARY, SCENARIOS, STABLE
from tests.output_lines import OutputLines

SPEED = 2.5  # 4 s looks
RATE = 250.0
SPLIT_TOLERANCE = 0.05  # roundrobin is exact; in-flight requests at a change blur a period's edges
CANARIST = Path(sys.executable).with_name("canarist")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie of ours would still answer: it is gone when its state says so.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100, (path, width, height)
    pixels = image.imread(str(path))
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0.01, f"{path} is blank"


def run_scenario(name: str, out: Path) -> DemoResult:
    options = DemoOptions(SCENARIOS[name], speed=SPEED, rate=RATE, seed=1, out=out, budget=150.0)
    return run_demo(options)


def common_checks(result: DemoResult) -> None:
    assert result.routing_failures == 0, result.loadgen
    assert result.loadgen.get("sent", 0) > 1000, result.loadgen
    assert result.refused_routes == []
    assert result.pids and all(gone(pid) for pid in result.pids), result.pids
    checked = [s for s in result.splits if s.total >= 300]
    assert checked, result.splits
    for split in checked:
        wanted = split.weights.get(CANARY, 0) / 100
        assert abs(split.share(CANARY) - wanted) <= SPLIT_TOLERANCE, (split.weights, split.served)
        if wanted == 0:
            assert split.served.get(CANARY, 0) <= 5  # only requests in flight at the change
    assert result.report is not None and result.report.name == "index.html"
    pngs = sorted(result.report.parent.glob("*.png"))
    assert {p.name for p in pngs} >= {"weights.png", "latency.png", "evidence.png", "estimates.png"}
    for png in pngs:
        check_png(png)
    html = result.report.read_text()
    assert "demo/fraud-detector" in html and "Decision log" in html


def test_a_good_canary_is_promoted(tmp_path: Path) -> None:
    result = run_scenario("good", tmp_path / "report")
    assert result.phase == "Succeeded", result.reason
    actions = [t["action"] for t in result.rollout["status"]["history"]]
    assert actions == ["Start", "Advance", "Advance", "Promote", "Complete"]
    assert "non-inferiority proven" in result.reason
    weights = [w["canaryWeight"] for w in result.rollout["status"]["weights"]]
    assert weights == [10, 25, 50, 100]
    assert [s.weights[CANARY] for s in result.splits] == [0, 10, 25, 50, 100]
    common_checks(result)


@pytest.mark.parametrize("name", ["latency", "accuracy", "errors", "gpu-cost"])
def test_a_regression_is_rolled_back_naming_its_metric(name: str, tmp_path: Path) -> None:
    scenario = SCENARIOS[name]
    result = run_scenario(name, tmp_path / "report")
    assert result.phase == "Failed", result.reason
    # the metric the scenario breaks proves it (another may prove it at the same look: both are named)
    assert result.reason.startswith("regression proven: ") and f"{scenario.expected_metric} (" in result.reason
    status = result.rollout["status"]
    assert status["canaryWeight"] == 0
    assert result.splits[-1].weights == {STABLE: 100, CANARY: 0}
    assert result.canary_requests_to_decide is not None and result.canary_requests_to_decide > 0
    common_checks(result)


def test_an_slo_breach_rolls_back_at_the_first_look_after_it(tmp_path: Path) -> None:
    result = run_scenario("slo-breach", tmp_path / "report")
    assert result.phase == "Failed", result.reason
    assert result.broke_at is not None
    assert "SLO breached: error-rate" in result.reason, result.reason
    status = result.rollout["status"]
    rollback = next(t for t in status["history"] if t["action"] == "Rollback")
    # The first look that can see the breach is the first whose windows (on the interval grid) cover it.
    interval = float(result.rollout["spec"]["strategy"]["interval"].removesuffix("s"))
    seen_from = math.ceil(result.broke_at / interval) * interval
    looks = [parse_timestamp(at) for at in status["looks"]["at"] if parse_timestamp(at) >= seen_from]
    assert looks and parse_timestamp(rollback["at"]) == looks[0], (result.broke_at, looks)
    advances = [t for t in status["history"] if t["action"] == "Advance"]
    # Healthy until then: no look that could see the breach advanced (a look just after the break,
    # before the grid's next window closes, still judges the windows before it: a slow machine may
    # take it after the break).
    assert advances and parse_timestamp(advances[-1]["at"]) < seen_from, (result.broke_at, advances[-1])
    common_checks(result)


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    """The real executable, interrupted mid-rollout: exit 130, every child gone."""
    demo = subprocess.Popen(
        [str(CANARIST), "demo", "--scenario", "good", "--speed", str(SPEED), "--out", str(tmp_path / "r")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    assert demo.stdout.readline().startswith("From another terminal, while it runs: export KUBECONFIG=")
    first = demo.stdout.readline()  # the first decision line: everything is running
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) == demo.pid]
    assert len(children) >= 5, (first, children)  # two model servers, haproxy, the load generator, Prometheus
    demo.send_signal(signal.SIGINT)
    rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 130, first + rest
    assert "Traceback" not in rest
    deadline = time.time() + 10
    while time.time() < deadline and not all(gone(pid) for pid in children):
        time.sleep(0.1)
    assert all(gone(pid) for pid in children), children


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_the_running_demo_is_watched_with_kubectl_and_aborted_from_another_terminal(tmp_path: Path) -> None:
    """Issue 19: the demo says how to watch it; ``kubectl get modelrollouts -w`` with its kubeconfig shows the
    phase, weight and step change, and ``canarist abort`` from another process rolls the demo back."""
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is not installed: `make test` installs Debian's kubernetes-client"
    out = tmp_path / "report"
    demo = subprocess.Popen(
        [str(CANARIST), "demo", "--scenario", "good", "--speed", str(SPEED), "--rate", str(RATE), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watch: subprocess.Popen[str] | None = None
    try:
        said = OutputLines(demo)
        hint = said.until(lambda line: "KUBECONFIG=" in line, 30)
        kubeconfig = Path(hint.split("KUBECONFIG=", 1)[1].split(";", 1)[0])
        assert kubeconfig == out / "kubeconfig" and "kubectl get modelrollouts -w" in hint and "abort" in hint
        deadline = time.monotonic() + 120
        while not kubeconfig.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        watch = subprocess.Popen([kubectl, "get", "modelrollouts", "-w"], stdout=subprocess.PIPE, text=True, env=env)
        rows = OutputLines(watch)
        header = rows.until(lambda line: line.startswith("NAME"), 30)
        assert header.split()[:4] == ["NAME", "PHASE", "WEIGHT", "STEP"]
        rows.until(lambda line: line.split()[1:3] == ["Progressing", "10"], 60)
        aborted = subprocess.run(
            [str(CANARIST), "abort", "fraud-detector"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert aborted.returncode == 0, aborted.stderr
        rows.until(lambda line: line.split()[1] in ("RollingBack", "Failed") and line.split()[2] == "0", 60)
        assert demo.wait(timeout=120) == 0, said.seen
        said.until(lambda line: "rolled back" in line, 5)
        assert not kubeconfig.exists()  # its API is gone with the demo
    finally:
        for process in (watch, demo):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
