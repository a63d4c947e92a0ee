"""The Triton edge: asks Triton Inference Servers what the gate needs, over HTTP with ``tritonclient``.

It only observes (readiness, metadata, the golden requests' answers) and reports what it saw as a
:class:`~controller.judge.gate.TritonObservation`; :mod:`controller.judge.gate` decides. A Triton
that does not answer is ``unreachable`` with the reason, never an exception to the caller.
"""

from __future__ import annotations

import contextlib
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
    signature_problems,
)


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
    """The canary's answer to one golden request; its outputs as numbers (a text output keeps its shape
    only: its values cannot be compared)."""
    inputs = []
    for name, tensor in request.inputs.items():
        value = np.asarray(tensor.data).astype(triton_to_np_dtype(tensor.datatype.value)).reshape(tensor.shape)
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
        numeric = array.dtype.kind in "biuf"
        values = tuple(float(v) for v in np.asarray(array, dtype=np.float64).ravel()) if numeric else ()
        outputs[output["name"]] = OutputValue(tuple(int(d) for d in array.shape), values)
    return GoldenAnswer(outputs=outputs, seconds=seconds)


def _may_ask(canary: VersionState, stable: VersionState) -> bool:
    """Whether the golden requests may go to the canary: both versions ready, and the same signature
    (a canary the gate refuses for its signature gets no request at all)."""
    if not (canary.ready and stable.ready):
        return False
    return (
        canary.signature is None
        or stable.signature is None
        or not signature_problems(stable.signature, canary.signature)
    )


class TritonProbe:
    """Observes a :class:`TritonTarget` for the gate (the :class:`~controller.engine.ports.GateProbe`).

    Never raises: whatever goes wrong talking to a Triton (refused, timed out, an answer that is not
    Triton's) is ``unreachable``, which the judge reads as "not yet", never as a pass. The checks of
    one observation stop at the target's timeout (each call is bounded by it too), so a Triton that
    answers slowly cannot hold the controller's loop for long.
    """

    def observe(self, target: TritonTarget, golden: Sequence[GoldenRequest]) -> TritonObservation:
        shared = target.stable_url is None
        deadline = time.monotonic() + target.timeout
        clients: list[triton_http.InferenceServerClient] = []
        where = target.url
        try:
            canary_client = _client(target.url, target.timeout)
            clients.append(canary_client)
            if not canary_client.is_server_live():
                return self._unreachable(target, f"{target.url}: the server is not live")
            canary = _version_state(canary_client, target.model, target.canary_version)
            stable_client = canary_client
            if target.stable_url is not None:
                where = target.stable_url
                stable_client = _client(target.stable_url, target.timeout)
                clients.append(stable_client)
                if not stable_client.is_server_live():
                    return self._unreachable(target, f"{target.stable_url}: the server is not live")
            stable = _version_state(stable_client, target.model, target.stable_version)
            where = target.url
            answers: list[GoldenAnswer] = []
            for request in golden if _may_ask(canary, stable) else ():
                if time.monotonic() > deadline:
                    return self._unreachable(target, f"{where}: the checks took longer than {target.timeout:g}s")
                answers.append(_golden(canary_client, target, request))
            if any(a.error for a in answers) and not canary_client.is_model_ready(target.model, target.canary_version):
                canary, answers = VersionState(ready=False), []  # it went away meanwhile: not yet
        except InferenceServerException as exc:
            return self._unreachable(target, f"{where}: {exc.message() or exc}")
        except Exception as exc:  # the edge's boundary: one rollout's Triton never stops the loop
            return self._unreachable(target, f"{where}: {type(exc).__name__}: {exc}")
        finally:
            for client in clients:
                with contextlib.suppress(Exception):
                    client.close()
        return TritonObservation(
            target.model, target.canary_version, canary, stable, golden=tuple(answers), shared_server=shared
        )

    @staticmethod
    def _unreachable(target: TritonTarget, reason: str) -> TritonObservation:
        nothing = VersionState(ready=False)
        return TritonObservation(
            target.model,
            target.canary_version,
            nothing,
            nothing,
            unreachable=reason,
            shared_server=target.stable_url is None,
        )
