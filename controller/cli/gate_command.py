"""``canarist gate``: the pre-traffic gate once, from a shell, as the controller runs it.

Exit status: 0 passed, 1 failed (the canary must not get traffic), 3 not yet (Triton unreachable or
not live, the canary's version not loaded or still loading), 2 bad input.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from controller.api.gate import TRITON_URL
from controller.cli.common import UserError, load_or_fail
from controller.judge.gate import GateStatus, GateVerdict

EXIT_CODES = {GateStatus.PASSED: 0, GateStatus.FAILED: 1, GateStatus.WAITING: 3}
#: A file of several rollouts exits with its most serious verdict.
SEVERITY = (GateStatus.PASSED, GateStatus.WAITING, GateStatus.FAILED)


@click.command()
@click.argument("policy", type=click.Path(path_type=Path))
@click.option("--triton", "url", help="The canary's Triton (host:port), instead of spec.gate.triton.url.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def gate(*, policy: Path, url: str | None, output: str) -> None:
    """Run each rollout's pre-traffic gate once and say whether its canary may get traffic.

    Triton: the server live, the canary's version loaded and ready (and, with one Triton for both
    versions, the stable's still loaded), the canary's signature the stable's, the golden requests
    answered as expected. Exit status: 0 passed, 1 failed, 3 not yet, 2 bad input.
    """
    from controller.edges.triton import TritonProbe
    from controller.engine.gate import run_gate

    if url is not None and not re.fullmatch(TRITON_URL.rstrip("$"), url):
        raise UserError(f"--triton: {url!r} is not host:port (http:// or https:// in front, no path)")
    rollouts = load_or_fail(policy)
    if not any(r.spec.gate is not None for r in rollouts):
        raise UserError(f"{policy}: spec.gate: no rollout in it has a gate")
    probe, worst = TritonProbe(), GateStatus.PASSED
    documents = []
    for rollout in rollouts:
        verdict = run_gate(rollout, probe, url)
        if verdict is None or rollout.spec.gate is None:
            continue
        documents.append(_document(rollout.key, url or rollout.spec.gate.triton.url, verdict))
        worst = max(worst, verdict.status, key=SEVERITY.index)
    for document in documents:
        click.echo(json.dumps(document, indent=2) if output == "json" else _table(document))
    sys.exit(EXIT_CODES[worst])


def _document(key: str, url: str, verdict: GateVerdict) -> dict[str, Any]:
    return {
        "rollout": key,
        "triton": url,
        "gate": verdict.status.value,
        "reason": verdict.reason,
        "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in verdict.checks],
    }


def _table(document: dict[str, Any]) -> str:
    lines = [f"{document['rollout']}  Triton {document['triton']}"]
    for check in document["checks"]:
        lines.append(f"  {'ok  ' if check['ok'] else 'FAIL'}  {check['check']:<10} {check['detail']}")
    lines.append(f"gate: {str(document['gate']).upper()}: {document['reason']}")
    return "\n".join(lines)
