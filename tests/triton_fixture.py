"""A real Triton Inference Server for the tests (``make triton`` installs it; nothing is skipped).

* ``triton_factory``: starts :class:`~controller.sandbox.demo.triton.TritonServer` objects on the
  models given, in ``tmp_path``, and stops each (its whole process group) at teardown.
* :func:`scorer`: the source of a Python-backend version that scores ``features`` (FP32, [-1, 4])
  into ``score`` (FP32, [-1]), slowed by ``delay_ms`` per request, failing ``fail_rate`` of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from controller.sandbox.demo.processes import PartMissingError, StartError
from controller.sandbox.demo.triton import PythonModel, Tensor, TritonInstall, TritonServer

FEATURES = Tensor("features", "FP32", (-1, 4))
SCORE = Tensor("score", "FP32", (-1,))


def scorer(
    *, delay_ms: float = 0.0, fail_rate: float = 0.0, scale: float = 1.0, load_s: float = 0.0, broken: bool = False
) -> str:
    """A version's ``model.py``: a logistic score of the features' sum, seeded, slowed or failing as asked,
    taking ``load_s`` seconds to load (or never loading: ``broken``)."""
    return f"""\
import random
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep({load_s})
        if {broken}:
            raise RuntimeError("this version cannot load")
        self.rng = random.Random(int(args["model_version"]))

    def execute(self, requests):
        answers = []
        for request in requests:
            time.sleep({delay_ms} / 1000)
            if self.rng.random() < {fail_rate}:
                answers.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("injected failure")))
                continue
            x = pb_utils.get_input_tensor_by_name(request, "features").as_numpy()
            score = (1.0 / (1.0 + np.exp(-{scale} * x.sum(axis=1)))).astype(np.float32)
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("score", score)]))
        return answers
"""


def fraud_model(
    versions: Mapping[int, str],
    *,
    name: str = "fraud",
    policy: str = "all: {}",
    inputs: tuple[Tensor, ...] = (FEATURES,),
    outputs: tuple[Tensor, ...] = (SCORE,),
) -> PythonModel:
    """The fraud model's signature (or another) with the given versions' sources."""
    return PythonModel(name, inputs, outputs, versions, version_policy=policy)


@pytest.fixture
def triton_factory(tmp_path: Path) -> Iterator[Callable[..., TritonServer]]:
    """Start Tritons on the models given; a missing install or a server that never gets ready FAILS the test."""
    servers: list[TritonServer] = []

    def start(models: Sequence[PythonModel], *, options: Sequence[str] = ()) -> TritonServer:
        try:
            server = TritonServer(TritonInstall.find(), tmp_path / f"triton-{len(servers)}", models, options=options)
            servers.append(server)
            return server.start()
        except (PartMissingError, StartError) as exc:
            pytest.fail(str(exc), pytrace=False)

    yield start
    for server in servers:
        server.stop()
