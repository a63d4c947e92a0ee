"""The Triton edge: asks Triton Inference Servers what the gate needs, over HTTP with ``tritonclient``.

It only observes (readiness, metadata, the golden requests' answers) and reports what it saw as a
:class:`~controller.judge.gate.TritonObservation`; :mod:`controller.judge.gate` decides. A Triton
that does not answer is ``unreachable`` with the reason, never an exception to the caller.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from controller.api.gate import GoldenRequest
from controller.judge.gate import (
    GoldenAnswer,
    OutputValue,
    Signature,
    TensorSpec,
    TritonObservation,
    TritonTarget,
    VersionState,
)

#: Errors of a Triton that is not there, or not answering in time (tritonclient's HTTP stack is gevent's).
_UNREACHABLE: tuple[type[BaseException], ...] = (OSError, TimeoutError)


def _client(url: str, timeout: float) -> triton_http.InferenceServerClient:
    ssl = url.startswith("https://")
    host = url.removeprefix("https://").removeprefix("http://")
    return triton_http.InferenceServerClient(
        host, ssl=ssl, connection_timeout=timeout, network_timeout=timeout, concurrency=1
    )


def _signature(metadata: dict[str, Any]) -> Signature:
    def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["datatype"], tuple(int(d) for d in t["shape"])) for t in items)

    return Signature(tensors(metadata.get("inputs", [])), tensors(metadata.get("outputs", [])))


def _version_state(client: triton_http.InferenceServerClient, model: str, version: str) -> VersionState:
    """Ready and its signature; not ready (no signature) for a version Triton does not know."""
    if not client.is_model_ready(model, version):
        return VersionState(ready=False)
    try:
        return VersionState(ready=True, signature=_signature(client.get_model_metadata(model, version)))
    except InferenceServerException as exc:
        if exc.status() in ("400", "404"):
            return VersionState(ready=False)
        raise


def _golden(client: triton_http.InferenceServerClient, target: TritonTarget, request: GoldenRequest) -> GoldenAnswer:
    inputs = []
    for name, tensor in request.inputs.items():
        value = np.asarray(tensor.data, dtype=triton_to_np_dtype(tensor.datatype.value)).reshape(tensor.shape)
        item = triton_http.InferInput(name, list(tensor.shape), tensor.datatype.value)
        item.set_data_from_numpy(value)
        inputs.append(item)
    began = time.monotonic()
    try:
        result = client.infer(target.model, inputs, model_version=target.canary_version)
    except InferenceServerException as exc:
        return GoldenAnswer(error=str(exc.message() or exc), seconds=time.monotonic() - began)
    seconds = time.monotonic() - began
    outputs: dict[str, OutputValue] = {}
    for output in (result.get_response() or {}).get("outputs", []):
        array = result.as_numpy(output["name"])
        if array is None:
            continue
        values = tuple(float(v) for v in np.asarray(array, dtype=np.float64).ravel())
        outputs[output["name"]] = OutputValue(tuple(int(d) for d in array.shape), values)
    return GoldenAnswer(outputs=outputs, seconds=seconds)


class TritonProbe:
    """Observes a :class:`TritonTarget` for the gate (the :class:`~controller.engine.ports.GateProbe`)."""

    def observe(self, target: TritonTarget, golden: Sequence[GoldenRequest]) -> TritonObservation:
        canary_client = _client(target.url, target.timeout)
        stable_client = canary_client if target.stable_url is None else _client(target.stable_url, target.timeout)
        shared = target.stable_url is None
        where = target.url
        try:
            if not canary_client.is_server_live():
                return self._unreachable(target, shared, f"{target.url}: the server is not live")
            canary = _version_state(canary_client, target.model, target.canary_version)
            where = target.stable_url or target.url
            stable = _version_state(stable_client, target.model, target.stable_version)
            where = target.url
            answers = tuple(_golden(canary_client, target, r) for r in golden) if canary.ready and stable.ready else ()
        except InferenceServerException as exc:
            return self._unreachable(target, shared, f"{where}: {exc.message() or exc}")
        except _UNREACHABLE as exc:
            return self._unreachable(target, shared, f"{where}: {type(exc).__name__}: {exc}")
        finally:
            canary_client.close()
            if stable_client is not canary_client:
                stable_client.close()
        return TritonObservation(
            target.model, target.canary_version, canary, stable, golden=answers, shared_server=shared
        )

    @staticmethod
    def _unreachable(target: TritonTarget, shared: bool, reason: str) -> TritonObservation:
        nothing = VersionState(ready=False)
        return TritonObservation(
            target.model, target.canary_version, nothing, nothing, unreachable=reason, shared_server=shared
        )
