"""Judge a Triton gate's observations: may the canary get its first request? Pure.

The edge (:mod:`controller.edges.triton`) asks Triton and reports what it saw as a
:class:`TritonObservation`; these rules decide. Three answers, each with its reason and the checks
behind it: PASSED; FAILED (the canary cannot serve as the stable does: another signature, a
golden request that errs or answers wrong, a version policy that unloads the stable); WAITING (not
yet: Triton unreachable or not live, the canary's version not loaded or still loading, the stable's
own Triton not serving the model). Waiting is
never a pass. Triton's own "server ready" is not asked: it means every model of the server is
ready, and another team's model still loading says nothing about this canary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from controller.api.gate import ExpectedOutput, GoldenRequest
from controller.api.model import ModelRollout
from controller.api.routing import RoutingMode


class GateStatus(StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"
    WAITING = "Waiting"


@dataclass(frozen=True)
class TritonTarget:
    """Where a gate looks: the canary's Triton (and the stable's, when each version has its own)."""

    url: str
    model: str
    canary_version: str  # "": each Triton's own choice (routing mode Subset: each serves one version)
    stable_version: str
    stable_url: str | None = None  # None: one Triton serves both versions (routing mode TritonVersion)
    timeout: float = 10.0


def target_of(rollout: ModelRollout, url: str | None = None) -> TritonTarget | None:
    """The rollout's Triton gate as a target (``url`` in place of the canary's), or None without one."""
    gate = rollout.spec.gate
    if gate is None:
        return None
    triton, routing = gate.triton, rollout.spec.routing
    if routing.mode is RoutingMode.TRITON_VERSION and routing.triton is not None:
        versions = routing.triton
        return TritonTarget(
            url or triton.url,
            versions.model,
            str(versions.canary_version),
            str(versions.stable_version),
            None,
            triton.timeout_seconds,
        )
    if triton.model is None or triton.stable_url is None:  # refused by controller.api.rules
        raise ValueError("a Subset-mode Triton gate needs model and stableUrl")
    return TritonTarget(url or triton.url, triton.model, "", "", triton.stable_url, triton.timeout_seconds)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model version's signature, as Triton's metadata gives it."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class OutputValue:
    shape: tuple[int, ...]
    values: tuple[float, ...]  # flattened, row-major


@dataclass(frozen=True)
class GoldenAnswer:
    """The canary's answer to one golden request: its outputs, or the error it gave, and how long it took."""

    outputs: Mapping[str, OutputValue] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class VersionState:
    """One model version in one Triton: whether it is ready, and its signature if Triton gave one."""

    ready: bool
    signature: Signature | None = None


@dataclass(frozen=True)
class TritonObservation:
    """What the edge saw. ``unreachable`` (a reason) when a Triton did not answer at all."""

    model: str
    canary_version: str  # "" for the Triton's own choice (routing mode Subset)
    canary: VersionState
    stable: VersionState
    unreachable: str | None = None
    golden: tuple[GoldenAnswer, ...] = ()
    #: Routing mode TritonVersion: both versions share one Triton, whose version policy must keep both.
    shared_server: bool = False


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class GateVerdict:
    status: GateStatus
    reason: str
    checks: tuple[Check, ...] = ()


def _version(observation: TritonObservation) -> str:
    version = f" version {observation.canary_version}" if observation.canary_version else ""
    return f"model {observation.model!r}{version}"


def judge_triton(observation: TritonObservation, golden: Sequence[GoldenRequest]) -> GateVerdict:
    """The gate's verdict on ``observation``, with ``golden`` the requests the policy keeps."""
    if observation.unreachable is not None:
        return GateVerdict(GateStatus.WAITING, f"Triton unreachable: {observation.unreachable}")
    if not observation.canary.ready:
        return GateVerdict(GateStatus.WAITING, f"the canary's {_version(observation)} is not loaded and ready yet")
    checks = [Check("ready", True, f"the canary's {_version(observation)} is loaded and ready")]
    if not observation.stable.ready and observation.shared_server:
        why = (
            "the stable version is no longer loaded: Triton's version policy unloaded it when the canary came "
            "(keep both, e.g. version_policy: { specific: { versions: [stable, canary] } })"
        )
        return GateVerdict(GateStatus.FAILED, why, (*checks, Check("stable", False, why)))
    if not observation.stable.ready:  # its own Triton, restarting or loading: its signature is not known yet
        why = f"the stable's Triton does not serve model {observation.model!r} (yet): its signature is unknown"
        return GateVerdict(GateStatus.WAITING, why, (*checks, Check("stable", False, why)))
    checks.append(Check("stable", True, "the stable version is loaded too"))
    canary, stable = observation.canary.signature, observation.stable.signature
    if canary is not None and stable is not None:
        problems = signature_problems(stable, canary)
        checks.append(Check("signature", not problems, "; ".join(problems) or "the canary's signature is the stable's"))
        if problems:
            return GateVerdict(GateStatus.FAILED, f"signature differs from the stable's: {problems[0]}", tuple(checks))
    if len(observation.golden) != len(golden):
        raise ValueError(f"{len(observation.golden)} golden answers for {len(golden)} requests")
    seconds = 0.0
    for i, (request, answer) in enumerate(zip(golden, observation.golden, strict=True)):
        label = request.name or f"#{i}"
        seconds = max(seconds, answer.seconds)
        problems = golden_problems(request.outputs, answer, canary)
        if problems:
            why = f"golden request {label}: {problems[0]}"
            return GateVerdict(GateStatus.FAILED, why, (*checks, Check("golden", False, why)))
    if golden:
        checks.append(
            Check("golden", True, f"{len(golden)} golden requests answered as expected (slowest {seconds:.3f}s)")
        )
    return GateVerdict(GateStatus.PASSED, "; ".join(c.detail for c in checks), tuple(checks))


def compatible(stable: tuple[int, ...], canary: tuple[int, ...]) -> bool:
    """Whether a caller's tensor of the stable's shape fits the canary's: same rank, each size equal or any."""
    return len(stable) == len(canary) and all(a == b or -1 in (a, b) for a, b in zip(stable, canary, strict=True))


def signature_problems(stable: Signature, canary: Signature) -> list[str]:
    """Each way a caller of the stable could break on the canary, naming the tensor and the field."""
    problems: list[str] = []
    for side in ("inputs", "outputs"):
        before = {t.name: t for t in getattr(stable, side)}
        after = {t.name: t for t in getattr(canary, side)}
        noun = side[:-1]
        for name in sorted(before.keys() - after.keys()):
            problems.append(f"{noun} {name!r} is missing")
        for name in sorted(after.keys() - before.keys()):
            problems.append(f"{noun} {name!r} is new")
        for name in sorted(before.keys() & after.keys()):
            old, new = before[name], after[name]
            if old.datatype != new.datatype:
                problems.append(f"{noun} {name!r}: datatype {new.datatype}, the stable's is {old.datatype}")
            if not compatible(old.shape, new.shape):
                problems.append(f"{noun} {name!r}: shape {list(new.shape)}, the stable's is {list(old.shape)}")
    return problems


def golden_problems(
    expected: Mapping[str, ExpectedOutput], answer: GoldenAnswer, signature: Signature | None
) -> list[str]:
    """What is wrong with one golden answer: an error, a missing output, a shape, a value, a non-finite one."""
    if answer.error is not None:
        return [f"the canary answered with an error: {answer.error}"]
    problems: list[str] = []
    declared = {t.name: t.shape for t in signature.outputs} if signature is not None else {}
    for name in sorted(set(expected) | set(declared) | set(answer.outputs)):
        value = answer.outputs.get(name)
        if value is None:
            problems.append(f"output {name!r} is missing")
            continue
        want = expected.get(name)
        if want is not None and want.shape is not None and list(value.shape) != want.shape:
            problems.append(f"output {name!r}: shape {list(value.shape)}, expected {want.shape}")
        elif name in declared and not compatible(declared[name], value.shape):
            problems.append(f"output {name!r}: shape {list(value.shape)}, the model declares {list(declared[name])}")
        bad = next((i for i, v in enumerate(value.values) if not math.isfinite(v)), None)
        if bad is not None:
            problems.append(f"output {name!r}: value {bad} is {value.values[bad]}")
        elif want is not None and want.data is not None:
            problems.extend(_values(name, value.values, want))
    return problems


def _values(name: str, values: tuple[float, ...], want: ExpectedOutput) -> list[str]:
    data = want.data or []
    if len(values) != len(data):
        return [f"output {name!r}: {len(values)} values, expected {len(data)}"]
    for i, (got, wanted) in enumerate(zip(values, data, strict=True)):
        if abs(got - wanted) > want.tolerance:
            return [f"output {name!r}: value {i} is {got:.6g}, expected {wanted:.6g} within {want.tolerance:g}"]
    return []
