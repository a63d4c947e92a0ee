"""A real Triton Inference Server on this machine: the ``tritonserver`` that ``nvidia-pytriton`` bundles.

PyTriton itself serves one version of a model name per process, so the tests and the demo run the
wheel's raw server on a model repository of Python-backend models instead, on CPU: one model,
several versions side by side (``version_policy``), Triton's own metrics on its metrics port.
The wheel lives in its own venv (``make triton``: Debian's ``/usr/bin/python3``, numpy < 2, which
the Python backend's stub needs and canarist's venv does not have); :class:`TritonInstall` finds
the pieces in it. The server is stopped by its process group, or its backend stubs are orphaned.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.sandbox.demo.processes import ManagedProcess, PartMissingError, StartError, free_port, http_ok

#: What tritonserver's log says when a port it was given is in use.
PORT_TAKEN = (
    "Address already in use",
    "cannot listen to HTTP requests and GRPC requests at the same",
    "Failed to start",
)
#: Where ``make triton`` puts Triton's venv: beside the repository's own ``.venv``.
DEFAULT_VENV = Path(__file__).resolve().parents[3] / ".triton-venv"
#: The venv's interpreter version: its backend stub must match the Python the models run under.
_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class TritonInstall:
    """The pieces of a ``nvidia-pytriton`` install that a raw ``tritonserver`` needs."""

    venv: Path

    @classmethod
    def find(cls, venv: Path | None = None) -> TritonInstall:
        """The install in ``venv`` (``$CANARIST_TRITON_VENV``, else ``.triton-venv``), or PartMissingError."""
        chosen = venv or Path(os.environ.get("CANARIST_TRITON_VENV") or DEFAULT_VENV)
        install = cls(chosen)
        for part in (install.server, install.stub, install.libraries):
            if not part.exists():
                raise PartMissingError(f"{part} not found: Triton's venv is missing or broken (`make triton` makes it)")
        return install

    @property
    def site_packages(self) -> Path:
        found = sorted((self.venv / "lib").glob("python3*/site-packages"))
        return found[0] if found else self.venv / "lib" / f"python{_PYTHON}" / "site-packages"

    @property
    def python_version(self) -> str:
        """The venv's Python (``3.11``), whose backend stub the models need."""
        return self.site_packages.parent.name.removeprefix("python")

    @property
    def server(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver" / "backends"

    @property
    def stub(self) -> Path:
        stubs = self.site_packages / "pytriton" / "tritonserver" / "python_backend_stubs"
        return stubs / self.python_version / "triton_python_backend_stub"

    @property
    def libraries(self) -> Path:
        """The shared libraries the wheel bundles (libcudart among them, which the stub loads even on CPU)."""
        return self.site_packages / "nvidia_pytriton.libs"

    def backend_directory(self, into: Path) -> Path:
        """A backends folder whose ``python`` backend has the stub beside it (the wheel keeps them apart)."""
        python = into / "python"
        python.mkdir(parents=True, exist_ok=True)
        for item in (self.backends / "python").iterdir():
            target = python / item.name
            if not target.exists():
                target.symlink_to(item)
        stub = python / self.stub.name
        if not stub.exists():
            stub.symlink_to(self.stub)
        return into

    def environment(self) -> dict[str, str]:
        """The server's environment: the venv first on PATH, the bundled and Python's libraries loadable."""
        libdir = self.venv / "lib"
        python_lib = _python_libdir(self.venv)
        paths = [str(self.libraries), python_lib, str(libdir)]
        return {
            **os.environ,
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}",
            "LD_LIBRARY_PATH": ":".join(p for p in paths if p),
        }


def _python_libdir(venv: Path) -> str:
    """Where the venv's base interpreter keeps libpython (its ``pyvenv.cfg`` home's ``lib``)."""
    config = venv / "pyvenv.cfg"
    if config.exists():
        for line in config.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                base = Path(value.strip()).parent / "lib"
                arch = base / f"{os.uname().machine}-linux-gnu"
                return f"{arch}:{base}" if arch.exists() else str(base)
    return ""


@dataclass(frozen=True)
class Tensor:
    """One input or output of a model's signature, as ``config.pbtxt`` writes it."""

    name: str
    datatype: str  # Triton's config type without TYPE_: FP32, INT64, ...
    dims: tuple[int, ...]

    def pbtxt(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        config_type = "STRING" if self.datatype == "BYTES" else self.datatype  # the config's name for BYTES
        return f'{{ name: "{self.name}" data_type: TYPE_{config_type} dims: [ {dims} ] }}'


@dataclass(frozen=True)
class PythonModel:
    """A Python-backend model: one signature (shared by its versions) and each version's ``model.py``."""

    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    versions: Mapping[int, str]  # version -> the source of its model.py
    version_policy: str = "all: {}"

    def config(self) -> str:
        return textwrap.dedent(
            f"""\
            name: "{self.name}"
            backend: "python"
            max_batch_size: 0
            version_policy: {{ {self.version_policy} }}
            input [ {", ".join(t.pbtxt() for t in self.inputs)} ]
            output [ {", ".join(t.pbtxt() for t in self.outputs)} ]
            instance_group [ {{ kind: KIND_CPU count: 1 }} ]
            """
        )

    def write(self, repository: Path) -> Path:
        """The model's folder in ``repository``: its config and one folder per version."""
        folder = repository / self.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(self.config())
        for version, source in self.versions.items():
            (folder / str(version)).mkdir(exist_ok=True)
            (folder / str(version) / "model.py").write_text(source)
        return folder


@dataclass
class TritonServer:
    """One ``tritonserver`` on loopback ports, serving ``models`` from a repository under ``workdir``."""

    install: TritonInstall
    workdir: Path
    models: Sequence[PythonModel]
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    #: More tritonserver options, e.g. ``--model-control-mode=poll`` to take new versions while it runs.
    options: Sequence[str] = ()
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """The HTTP endpoint, as tritonclient takes it (host:port)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def argv(self) -> list[str]:
        repository = self.repository
        for model in self.models:
            model.write(repository)
        backends = self.install.backend_directory(self.workdir / "backends")
        return [
            str(self.install.server),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=2",
            "--log-verbose=0",
            *self.options,
        ]

    @property
    def repository(self) -> Path:
        return self.workdir / "models"

    def __post_init__(self) -> None:
        self._distinct_ports()

    def _distinct_ports(self) -> None:
        """Three different free ports (two calls of free_port may name the same one)."""
        while len({self.http_port, self.grpc_port, self.metrics_port}) < 3:
            self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()

    def start(self, timeout: float = 90.0, *, ready: bool = True, attempts: int = 3) -> TritonServer:
        """Start and wait until the server says it is ready (every model loaded), or only live; on
        fresh ports again when a port it picked was taken meanwhile (another process got it first)."""
        health = "ready" if ready else "live"
        for attempt in range(attempts):
            process = ManagedProcess(
                "tritonserver", self.argv(), self.workdir / "tritonserver.log", env=self.install.environment()
            )
            try:
                self.process = process.start(lambda: http_ok(f"http://{self.url}/v2/health/{health}"), timeout)
                return self
            except StartError as exc:
                taken = any(words in str(exc) for words in PORT_TAKEN)
                if not taken or attempt == attempts - 1:
                    raise
                self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
                self._distinct_ports()
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=5)
            self.process = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: The repository root: the demo's Triton models import the demo's model code from it.
REPOSITORY_ROOT = Path(__file__).resolve().parents[3]


def fraud_model(
    model_json: str,
    *,
    output: str = "score",
    name: str = "fraud",
    scores: tuple[str, dict[str, str], tuple[float, ...]] | None = None,
) -> PythonModel:
    """The demo's fraud classifier as a one-version Triton model: the same
    :class:`~controller.sandbox.demo.model.Model` code (imported from this repository) on ``model_json``,
    its ``features`` (FP32, [-1, 8]) scored into ``output`` (FP32, [-1]); another output name is
    another signature (the bad-signature scenario's canary). With ``scores`` (a metric name, its
    labels and bucket bounds), Triton exports the scores as a histogram from the Python backend
    (``pb_utils.MetricFamily`` of kind HISTOGRAM), as a model exports its outputs."""
    metric, labels, buckets = scores if scores is not None else ("", {}, ())
    source = textwrap.dedent(
        f"""\
        import sys

        import numpy as np
        import triton_python_backend_utils as pb_utils

        sys.path.insert(0, {str(REPOSITORY_ROOT)!r})
        from controller.sandbox.demo.model import Model  # noqa: E402

        MODEL = Model.from_json({model_json!r})


        class TritonPythonModel:
            def initialize(self, args):
                self.family = self.scores = None  # the family must outlive its metric
                if {metric!r}:
                    self.family = pb_utils.MetricFamily(
                        name={metric!r}, description="the model's scores", kind=pb_utils.MetricFamily.HISTOGRAM
                    )
                    self.scores = self.family.Metric(labels={labels!r}, buckets={list(buckets)!r})

            def execute(self, requests):
                answers = []
                for request in requests:
                    x = pb_utils.get_input_tensor_by_name(request, "features").as_numpy()
                    score = MODEL.predict_proba(x.astype(np.float64)).astype(np.float32)
                    if self.scores is not None:
                        for value in score:
                            self.scores.observe(float(value))
                    answers.append(pb_utils.InferenceResponse([pb_utils.Tensor({output!r}, score)]))
                return answers
        """
    )
    features = Tensor("features", "FP32", (-1, 8))
    return PythonModel(name, (features,), (Tensor(output, "FP32", (-1,)),), {1: source}, "latest: { num_versions: 1 }")


def inference_count(server: TritonServer, version: str | None = None, model: str = "fraud") -> int:
    """Inferences ``server`` ran for ``model`` (its ``version``, or all of them), by its own
    ``nv_inference_count``; OSError when its metrics port does not answer (never a silent 0)."""
    with urllib.request.urlopen(f"http://{server.metrics_target}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    versions = re.escape(version) if version is not None else '[^"]*'
    pattern = rf'^nv_inference_count{{model="{re.escape(model)}",version="{versions}"}} (\d+)'
    return sum(int(n) for n in re.findall(pattern, text, re.MULTILINE))
