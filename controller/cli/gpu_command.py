"""``canarist gpu-agent``: what each GPU process on this node uses, and which pod it is.

``--once`` reads NVML once and prints a line per GPU process (its GPU, pid, pod uid and container,
memory, SM and memory utilisation). Without NVML it says why in one line and exits 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("gpu-agent")
@click.option("--once", is_flag=True, required=True, help="Read NVML once, print each GPU process, exit.")
@click.option("--proc", type=click.Path(path_type=Path, file_okay=False), default=Path("/proc"), show_default=True)
def gpu_agent(*, once: bool, proc: Path) -> None:
    """Per GPU process: the pod and container it belongs to, its GPU memory and SM utilisation (NVML).

    Needs the host's PIDs (hostPID) and the GPU devices. Exit status 1 when NVML cannot be used here.
    """
    from controller.edges.gpu.nvml import Nvml, NvmlUnavailableError
    from controller.edges.gpu.pods import pod_of_pid

    try:
        nvml = Nvml()
    except NvmlUnavailableError as exc:
        click.echo(f"canarist gpu-agent: {exc}", err=True)
        sys.exit(1)
    with nvml:
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
