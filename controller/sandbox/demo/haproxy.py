"""The demo's data plane: haproxy splitting traffic with the weights of the rendered VirtualService.

In production Envoy applies the VirtualService; on one machine haproxy (Debian's, 2.6) does the
same job. :func:`weights_from_virtual_service` reads the split out of the rendered object, and
:class:`Haproxy` applies it live through the admin socket (``set weight model/<name> <w>``), so
the demo's traffic follows exactly what the controller wrote. The client side is HTTP keep-alive;
haproxy still picks a server per request (``prefer-last-server`` is off by default).

The backend balances ``roundrobin``: weighted, dynamic (weights change on the fly, 0 drains a
server) and deterministic, so the realised split equals the weights to within a request or two per
round instead of carrying binomial noise; the analysis then sees the share it assumes. haproxy runs
in the foreground (``-db``, no master process): the process we start is the one that serves, so it
is stopped by its PID (no pidfile: haproxy writes one only as a daemon or master), and SIGTERM
stops it at once.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from controller.sandbox.demo.processes import HAPROXY, ManagedProcess, PartMissingError, StartError, require

BACKEND = "model"
_SUN_PATH_MAX = 107  # bytes in sockaddr_un.sun_path, less the final NUL
_RESPONSE_COLUMNS = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")


class HaproxyError(RuntimeError):
    """haproxy is missing, did not start, or refused an admin command."""


def weights_from_virtual_service(vs: Mapping[str, Any]) -> dict[str, int]:
    """{subset: weight} of the weighted split: the http route named ``primary``, else the last one.

    A destination without a weight takes 100 (Istio's rule for a single destination).
    """
    if vs.get("kind") != "VirtualService":
        raise ValueError(f"expected a VirtualService, got kind {vs.get('kind')!r}")
    spec = vs.get("spec")
    routes = spec.get("http") if isinstance(spec, Mapping) else None
    if not isinstance(routes, list) or not routes or not all(isinstance(r, Mapping) for r in routes):
        raise ValueError("the VirtualService has no spec.http routes")
    route = next((r for r in routes if r.get("name") == "primary"), routes[-1])
    destinations = route.get("route")
    name = route.get("name", f"#{len(routes) - 1}")
    if not isinstance(destinations, list) or not destinations:
        raise ValueError(f"http route {name!r} has no destinations")
    weights: dict[str, int] = {}
    for entry in destinations:
        destination = entry.get("destination") if isinstance(entry, Mapping) else None
        subset = destination.get("subset") if isinstance(destination, Mapping) else None
        if not isinstance(subset, str) or not subset:
            raise ValueError(
                f"http route {name!r}: every destination needs a subset, got {entry!r} "
                "(a Triton-mode route splits by URI rewrite, which server weights cannot follow)"
            )
        weight = entry.get("weight", 100)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise ValueError(f"http route {name!r}: weight of {subset!r} must be an integer in 0..100, got {weight!r}")
        if subset in weights:
            raise ValueError(f"http route {name!r}: subset {subset!r} appears twice")
        weights[subset] = weight
    if len(destinations) > 1 and sum(weights.values()) != 100:
        raise ValueError(f"http route {name!r}: weights {weights} do not sum to 100")
    return weights


class Haproxy:
    """One haproxy in the foreground: a frontend on loopback, backend ``model`` with one server per version."""

    def __init__(
        self, workdir: Path, *, frontend_port: int, servers: Mapping[str, int], weights: Mapping[str, int]
    ) -> None:
        if not servers:
            raise ValueError("haproxy needs at least one server")
        _check_weights(servers, weights)
        self.workdir = workdir
        self.frontend_port = frontend_port
        self.servers = dict(servers)
        self.weights = {name: weights.get(name, 0) for name in servers}
        self.config = workdir / "haproxy.cfg"
        self.log = workdir / "haproxy.log"
        self.socket = workdir / "admin.sock"
        self._sockdir: Path | None = None
        self._process: ManagedProcess | None = None
        self._pid: int | None = None

    @property
    def pid(self) -> int | None:
        """The PID haproxy ran as (kept after a stop, so a caller can check it is gone)."""
        return self._pid

    def render_config(self) -> str:
        """haproxy.cfg. The route timeouts stay generous: the VirtualService's own timeout is Envoy's business."""
        lines = [
            "global",
            f"    stats socket {self.socket} mode 600 level admin",
            "    maxconn 4096",
            "",
            "defaults",
            "    mode http",
            "    option http-keep-alive",
            "    option redispatch",
            "    retries 2",
            "    retry-on conn-failure empty-response",
            "    timeout connect 2s",
            "    timeout client 60s",
            "    timeout server 30s",
            "    timeout http-request 10s",
            "    timeout http-keep-alive 60s",
            "",
            "frontend mesh",
            f"    bind 127.0.0.1:{self.frontend_port}",
            f"    default_backend {BACKEND}",
            "",
            f"backend {BACKEND}",
            "    balance roundrobin",
        ]
        lines += [f"    server {n} 127.0.0.1:{p} weight {self.weights[n]}" for n, p in self.servers.items()]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> Haproxy:
        """Write the config, start haproxy and wait until its frontend accepts connections."""
        if self._process is not None:
            raise HaproxyError("haproxy is already started")
        try:
            binary = require(HAPROXY, "haproxy")
        except PartMissingError as exc:
            raise HaproxyError(str(exc)) from None
        self.workdir.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(self.socket)) > _SUN_PATH_MAX:  # too long for a Unix socket: use a short directory
            self._sockdir = Path(tempfile.mkdtemp(prefix="canarist-haproxy-"))
            self.socket = self._sockdir / "admin.sock"
        self.config.write_text(self.render_config(), encoding="utf-8")
        self._process = ManagedProcess("haproxy", [binary, "-db", "-f", str(self.config)], self.log)
        try:
            self._process.start(lambda: self.socket.exists() and _accepts(self.frontend_port), timeout)
        except StartError as exc:
            self.stop()
            raise HaproxyError(str(exc)) from None
        self._pid = self._process.pid
        return self

    def command(self, line: str) -> str:
        """One command on the admin socket, its answer."""
        if self._process is None or not self._process.alive():
            raise HaproxyError("haproxy is not running")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(str(self.socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """New weights for the named servers, live; 0 sends a server no new requests."""
        _check_weights(self.servers, weights)
        for name, weight in weights.items():
            answer = self.command(f"set weight {BACKEND}/{name} {weight}").strip()
            if answer:
                raise HaproxyError(f"set weight {BACKEND}/{name} {weight}: {answer}")
            self.weights[name] = weight

    def current_weights(self) -> dict[str, int]:
        """The weights haproxy applies now, as it reports them."""
        out = {}
        for name in self.servers:
            answer = self.command(f"get weight {BACKEND}/{name}").strip()
            try:
                out[name] = int(answer.split()[0])
            except (IndexError, ValueError):
                raise HaproxyError(f"get weight {BACKEND}/{name}: {answer}") from None
        return out

    def stats(self) -> list[dict[str, str]]:
        """``show stat`` as rows of the backend and its servers."""
        text = self.command("show stat").lstrip("# ")
        return [row for row in csv.DictReader(text.splitlines()) if row.get("pxname") == BACKEND]

    def served(self) -> dict[str, int]:
        """HTTP responses each server has given: the hrsp_* columns, one per request, keep-alive or not.

        (``stot`` and ``req_tot`` count the same for a server in HTTP mode; responses leave out the
        requests still in flight, so a snapshot never counts what has not been served yet.)
        """
        rows = {row["svname"]: row for row in self.stats()}
        return {name: sum(int(rows[name][c] or 0) for c in _RESPONSE_COLUMNS) for name in self.servers}

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (haproxy stops at once), SIGKILL if it lingers; idempotent."""
        if self._process is not None:
            self._process.stop(timeout)
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None

    def __enter__(self) -> Haproxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _check_weights(servers: Mapping[str, int], weights: Mapping[str, int]) -> None:
    unknown = sorted(set(weights) - set(servers))
    if unknown:
        raise ValueError(f"weights for unknown servers {unknown}; servers are {sorted(servers)}")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 256:
            raise ValueError(f"weight of {name!r} must be an integer in 0..256, got {weight!r}")


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
