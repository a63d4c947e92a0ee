#!/usr/bin/env bash
# The GPU agent's NVML path on a real GPU, in one command: two processes share GPU 0 (one holding
# 1 GiB, one holding 2 GiB and keeping the SMs busy), then the agent's reading is printed: each
# process with its memory and SM utilisation, mapped to its pod (none here: not in Kubernetes).
# Needs the NVIDIA driver and python3; pynvml from PYTHONPATH or the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" bench/gpu_hold.py 1024 20 & a=$!
"$PY" bench/gpu_hold.py 2048 20 --busy & b=$!
trap 'kill $a $b 2>/dev/null || true' EXIT
sleep 6
"$PY" - "$a" "$b" <<'PY'
import sys, time
from controller.edges.gpu.nvml import Nvml
from controller.edges.gpu.pods import pod_of_pid
holders = {int(sys.argv[1]): "1 GiB, idle", int(sys.argv[2]): "2 GiB, busy"}
with Nvml() as nvml:
    nvml.read()  # the first read sets where the utilisation samples start
    time.sleep(3)
    reading = nvml.read()
print(f"GPUs: {reading.gpus}; no per-process utilisation on: {reading.unsupported}")
for p in reading.processes:
    mine = holders.get(p.pid, "another process")
    print(f"{p.gpu_uuid} pid {p.pid} ({mine}): memory {p.used_memory_bytes} B, SM {p.sm_percent} %, "
          f"memory bandwidth {p.memory_percent} %, pod {pod_of_pid(p.pid)}")
seen = {p.pid for p in reading.processes}
assert set(holders) <= seen, f"the holders {sorted(holders)} are not all among {sorted(seen)}"
PY
