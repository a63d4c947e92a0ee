"""``spec.gate``: what must hold before the canary gets its first request. Pure.

A Triton gate names the Triton that serves the canary (``url``) and, where each version has its
own Triton (routing mode Subset), the stable's (``stableUrl``), so the two signatures can be
compared; with routing mode TritonVersion one Triton serves both versions and the model and
versions come from ``routing.triton``. ``goldenRequests`` are a few requests the team keeps with
the policy, each with the outputs it expects (within an absolute tolerance) or, without them, at
least no error, the expected shapes and finite values.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from controller.api.fields import TRITON_MODEL, DnsLabel, Duration, Model
from controller.api.units import parse_duration

#: host[:port], with http:// or https:// in front or not; no path (tritonclient takes host:port).
TRITON_URL = r"^(https?://)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?$"
TENSOR_NAME = r"^[A-Za-z_][A-Za-z0-9_.:-]*$"
#: The gate's checks run in the controller's loop: bounded, so a slow Triton cannot hold it up.
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 1.0, 30.0
#: The values each integer datatype holds (a golden input outside them cannot be sent).
INTEGER_RANGES = {
    "BOOL": (0, 1),
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}
#: Bounds on what a policy carries inline: a gate is a smoke test, not a dataset.
MAX_GOLDEN_REQUESTS = 16
MAX_TENSOR_VALUES = 4096
MAX_RANK = 8

TritonUrl = Annotated[str, StringConstraints(pattern=TRITON_URL, max_length=260)]
TensorName = Annotated[str, StringConstraints(pattern=TENSOR_NAME, max_length=128)]
Dimension = Annotated[int, Field(ge=0, le=1_000_000)]


class Datatype(StrEnum):
    """Triton's tensor datatypes that a golden request can carry as JSON numbers."""

    BOOL = "BOOL"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"


class GoldenTensor(Model):
    """One input: its datatype, shape and values (flattened, row-major)."""

    datatype: Datatype = Field(strict=False)
    shape: list[Dimension] = Field(min_length=1, max_length=MAX_RANK)
    data: list[float] = Field(max_length=MAX_TENSOR_VALUES)


class ExpectedOutput(Model):
    """What one output must be: its shape and values within ``tolerance`` (absolute), where given."""

    shape: list[Dimension] | None = Field(default=None, min_length=1, max_length=MAX_RANK)
    data: list[float] | None = Field(default=None, max_length=MAX_TENSOR_VALUES)
    tolerance: float = Field(default=1e-6, ge=0)


class GoldenRequest(Model):
    name: DnsLabel | None = None
    inputs: dict[TensorName, GoldenTensor] = Field(min_length=1, max_length=32)
    outputs: dict[TensorName, ExpectedOutput] = Field(default_factory=dict, max_length=32)


class TritonGate(Model):
    """The Triton checks before the first step (and after a new canary revision)."""

    url: TritonUrl = Field(description="The canary's Triton (host:port; http:// or https:// in front).")
    stable_url: TritonUrl | None = Field(
        default=None, description="The stable's Triton, routing mode Subset: its signature is compared."
    )
    model: Annotated[str, StringConstraints(pattern=TRITON_MODEL, max_length=128)] | None = Field(
        default=None, description="The model's name in Triton (routing mode TritonVersion: routing.triton.model)."
    )
    timeout: Duration = Field(
        default="5s",
        description="Bounds each of the gate's calls, and when its golden requests stop (1s to 30s).",
    )
    golden_requests: list[GoldenRequest] = Field(default_factory=list, max_length=MAX_GOLDEN_REQUESTS)

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout)


class Gate(Model):
    triton: TritonGate
