"""``canarist gpu-agent``: what each GPU process on this node uses, by pod, as Prometheus series.

Without ``--once`` it is the node agent: it samples NVML every ``--interval`` seconds, attributes
each GPU process to its pod and container, and serves ``/metrics`` and ``/healthz`` on ``--port``
until SIGTERM or SIGINT. ``--once`` reads NVML once and prints a line per GPU process (its GPU, pid,
pod uid and container, memory, SM and memory utilisation). Either way, without NVML it says why in
one line and exits 1.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from controller.edges.gpu.nvml import Nvml


@click.command("gpu-agent")
@click.option("--once", is_flag=True, help="Read NVML once, print each GPU process, exit.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.5),
    default=5.0,
    show_default=True,
    help="Seconds between samples.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=9400, show_default=True, help="/metrics and /healthz.")
@click.option(
    "--bind-address",
    default="127.0.0.1",
    show_default=True,
    help="Where that server listens; the DaemonSet passes 0.0.0.0 so that probes and Prometheus reach the pod IP.",
)
@click.option(
    "--node-name",
    envvar="NODE_NAME",
    help="This node: only its pods are listed ($NODE_NAME; the DaemonSet sets it). Unset: every node's.",
)
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="As kubectl; in a pod, the service account.")
@click.option("--context", help="As kubectl.")
@click.option("--proc", type=click.Path(path_type=Path, file_okay=False), default=Path("/proc"), show_default=True)
def gpu_agent(
    *,
    once: bool,
    interval: float,
    port: int,
    bind_address: str,
    node_name: str | None,
    kubeconfig: str | None,
    context: str | None,
    proc: Path,
) -> None:
    """Per GPU process: the pod and container it belongs to, its GPU memory and SM utilisation (NVML).

    Needs the host's PIDs (hostPID) and the GPU devices. Exit status 1 when NVML cannot be used here.
    """
    from controller.edges.gpu.nvml import Nvml, NvmlSampleError, NvmlUnavailableError

    try:
        nvml = Nvml()
    except NvmlUnavailableError as exc:
        click.echo(f"canarist gpu-agent: {exc}", err=True)
        sys.exit(1)
    with nvml:
        if once:
            try:
                print_once(nvml, proc)
            except NvmlSampleError as exc:
                click.echo(f"canarist gpu-agent: {exc}", err=True)
                sys.exit(1)
        else:
            serve_forever(
                nvml,
                interval=interval,
                port=port,
                bind_address=bind_address,
                node_name=node_name,
                kubeconfig=kubeconfig,
                context=context,
                proc=proc,
            )


def serve_forever(
    nvml: Nvml,
    *,
    interval: float,
    port: int,
    bind_address: str,
    node_name: str | None,
    kubeconfig: str | None,
    context: str | None,
    proc: Path,
) -> None:
    """The node agent: sample every ``interval`` seconds and serve the series until SIGTERM or SIGINT."""
    from controller.edges.gpu.agent import Agent
    from controller.edges.gpu.directory import connect
    from controller.edges.gpu.exporter import serve

    logging.basicConfig(level=logging.INFO, format='{"time":"%(asctime)s","level":"%(levelname)s","msg":"%(message)s"}')
    agent = Agent(nvml, connect(kubeconfig, context, node_name), interval=interval, proc=proc)
    try:
        server = serve(agent, port, bind_address)
    except OSError as exc:
        click.echo(f"canarist gpu-agent: cannot listen on {bind_address}:{port}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    host, bound = server.server_address[:2]
    logging.getLogger("canarist.gpu").info("gpu-agent: serving /metrics on %s:%s every %gs", host, bound, interval)
    try:
        agent.run(stop)
    finally:
        server.shutdown()
        server.server_close()


def print_once(nvml: Nvml, proc: Path) -> None:
    """One reading, a line per GPU process."""
    from controller.edges.gpu.pods import pod_of_pid

    reading = nvml.read()
    click.echo(f"{len(reading.gpus)} GPU(s): {', '.join(reading.gpus) or '-'}")
    for uuid in reading.unsupported:
        click.echo(f"{uuid}: no per-process utilisation on this device (NVML NotSupported): memory only")
    for p in reading.processes:
        pod = pod_of_pid(p.pid, proc)
        where = f"pod {pod.uid} container {pod.container_id or '-'}" if pod else "not in a pod"
        memory = f"{p.used_memory_bytes / 2**20:.0f} MiB" if p.used_memory_bytes is not None else "-"
        sm = f"{p.sm_percent:.0f} %" if p.sm_percent is not None else "-"
        mem = f"{p.memory_percent:.0f} %" if p.memory_percent is not None else "-"
        click.echo(f"{p.gpu_uuid}  pid {p.pid}  {where}  memory {memory}  SM {sm}  memory bandwidth {mem}")
    if not reading.processes:
        click.echo("no compute processes on any GPU")
