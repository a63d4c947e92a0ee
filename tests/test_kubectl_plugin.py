"""``kubectl canarist ...`` (issue 18, item 3): the real kubectl finds the plugin on the PATH and runs it.

kubectl (Debian's ``kubernetes-client`` where no other is on the PATH; ``make test`` installs it)
discovers ``kubectl-canarist`` from the venv, passes every argument on, and the plugin talks to
the local API stand-in through kubectl's own kubeconfig (``$KUBECONFIG``, its current context and
namespace), with kubectl's conventions: ``-n``, ``--context``, ``-A``, ``-o json|yaml``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.names import COMMAND_ANNOTATION
from controller.sandbox.localapi import LocalApiServer, local_api_server

KUBECTL = shutil.which("kubectl")
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[LocalApiServer, dict[str, str]]]:
    """The stand-in with a rollout in each of two namespaces, and kubectl's environment for it."""
    assert KUBECTL is not None, "kubectl is not installed: `make test` installs Debian's kubernetes-client"
    with local_api_server() as api:
        for namespace in ("ml", "search"):
            api.seed({"apiVersion": "canarist.io/v1alpha1", "kind": "ModelRollout",
                      "metadata": {"name": f"{namespace}-model", "namespace": namespace}, "spec": {},
                      "status": {"phase": "Progressing", "canaryWeight": 20, "currentStep": 1}})  # fmt: skip
        kubeconfig = tmp_path / "config"
        contexts = [
            {"name": "team-ml", "context": {"cluster": "local", "user": "me", "namespace": "ml"}},
            {"name": "team-search", "context": {"cluster": "local", "user": "me", "namespace": "search"}},
        ]
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "team-ml", "contexts": contexts,
            "clusters": [{"name": "local", "cluster": {"server": api.url}}], "users": [{"name": "me", "user": {}}],
        }))  # fmt: skip
        env = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "KUBECONFIG": str(kubeconfig),
               "HOME": str(tmp_path)}  # fmt: skip
        yield api, env


def kubectl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    return subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_kubectl_discovers_the_plugin(world: tuple[LocalApiServer, dict[str, str]]) -> None:
    _, env = world
    listed = kubectl(env, "plugin", "list")
    assert str(VENV_BIN / "kubectl-canarist") in listed.stdout, listed.stdout + listed.stderr


def test_status_lists_the_contexts_namespace_as_kubectl_does(world: tuple[LocalApiServer, dict[str, str]]) -> None:
    _, env = world
    mine = kubectl(env, "canarist", "status")
    assert mine.returncode == 0, mine.stderr
    assert "ml-model" in mine.stdout and "search-model" not in mine.stdout
    other = kubectl(env, "canarist", "status", "--context", "team-search")
    assert "search-model" in other.stdout and "ml-model" not in other.stdout
    everywhere = kubectl(env, "canarist", "status", "-A")
    assert "ml-model" in everywhere.stdout and "search-model" in everywhere.stdout
    named = kubectl(env, "canarist", "status", "-n", "search", "-o", "json")
    documents: list[dict[str, Any]] = json.loads(named.stdout)
    assert [(d["namespace"], d["name"], d["status"]["canaryWeight"]) for d in documents] == [
        ("search", "search-model", 20)
    ]
    as_yaml = yaml.safe_load(kubectl(env, "canarist", "status", "ml-model", "-o", "yaml").stdout)
    assert as_yaml[0]["status"]["phase"] == "Progressing"


def test_steering_through_kubectl_writes_the_command_on_the_rollout(
    world: tuple[LocalApiServer, dict[str, str]],
) -> None:
    api, env = world
    paused = kubectl(env, "canarist", "pause", "ml-model")
    assert paused.returncode == 0 and paused.stdout.startswith("ml/ml-model: pause requested"), paused.stderr
    stored = api.get("canarist.io", "modelrollouts", "ml", "ml-model") or {}
    assert stored["metadata"]["annotations"][COMMAND_ANNOTATION] == "pause"


def test_a_mistake_through_kubectl_is_one_line_and_a_non_zero_exit(
    world: tuple[LocalApiServer, dict[str, str]],
) -> None:
    _, env = world
    missing = kubectl(env, "canarist", "abort", "nope")
    assert missing.returncode != 0 and missing.stderr.strip().splitlines()[-1].endswith(
        "modelrollout ml/nope not found"
    )
    both = kubectl(env, "canarist", "status", "-A", "-n", "ml")
    assert both.returncode == 2 and "-A and -n: choose one" in both.stderr
