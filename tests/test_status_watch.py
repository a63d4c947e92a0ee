"""``canarist status --watch`` as a user sees it (issue 18, item 5): in a real terminal, tmux.

The command runs in a detached tmux session against the local API stand-in; the test reads the
screen as the user would (``tmux capture-pane``), changes the rollout in the API, reads the screen
again, then presses Ctrl-C and expects the command gone without a traceback on the screen.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.sandbox.localapi import LocalApiServer, local_api_server

TMUX = shutil.which("tmux")
CANARIST = Path(sys.executable).parent / "canarist"


def rollout(phase: str, weight: int, step: int, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "canarist.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "scorer", "namespace": "ml"},
        "spec": {},
        "status": {"phase": phase, "canaryWeight": weight, "currentStep": step, "message": message},
    }


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[tuple[LocalApiServer, Callable[..., str], Callable[..., None]]]:
    """The API stand-in, and a tmux session (its own server socket) to run a command in and read."""
    assert TMUX is not None, "tmux is not installed: `make test` installs it"
    socket = f"canarist-test-{os.getpid()}"
    with local_api_server() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "config", namespace="ml")

        def tmux(*args: str) -> str:
            assert TMUX is not None
            done = subprocess.run([TMUX, "-L", socket, *args], capture_output=True, text=True, timeout=20, check=False)
            return done.stdout

        def start(*command: str) -> None:
            shell = f"env KUBECONFIG={kubeconfig} TERM=xterm-256color {' '.join(command)}; sleep 30"
            tmux("new-session", "-d", "-s", "watch", "-x", "140", "-y", "30", shell)

        try:
            yield api, tmux, start
        finally:
            tmux("kill-server")


def screen_shows(tmux: Callable[..., str], wanted: Callable[[str], bool], seconds: float = 20.0) -> str:
    deadline = time.monotonic() + seconds
    shown = ""
    while time.monotonic() < deadline:
        shown = tmux("capture-pane", "-p", "-t", "watch")
        if wanted(shown):
            return shown
        time.sleep(0.25)
    pytest.fail(f"the screen never showed what was expected; it showed:\n{shown}")


def test_the_watch_shows_each_change_of_the_rollout_and_leaves_on_ctrl_c(
    terminal: tuple[LocalApiServer, Callable[..., str], Callable[..., None]],
) -> None:
    api, tmux, start = terminal
    api.seed(rollout("Progressing", 20, 1, "analysing step 1"))
    start(str(CANARIST), "status", "--watch", "-n", "ml")
    first = screen_shows(tmux, lambda s: "scorer" in s and "Progressing" in s)
    assert "20%" in first and "analysing step 1" in first
    api.seed(rollout("Succeeded", 100, 2, "promoted"))
    after = screen_shows(tmux, lambda s: "Succeeded" in s)
    assert "100%" in after and "Progressing" not in after  # redrawn in place, not scrolled
    tmux("send-keys", "-t", "watch", "C-c")
    time.sleep(1.5)
    left = tmux("capture-pane", "-p", "-t", "watch")
    assert "Traceback" not in left and "KeyboardInterrupt" not in left
    running = tmux("display-message", "-p", "-t", "watch", "#{pane_current_command}").strip()
    assert running == "sleep", running  # the shell went on to its `sleep`: the watch has exited
