"""Hold GPU memory from a real CUDA context (the driver API through ctypes, no CUDA toolkit needed)
and, with ``--busy``, keep the SMs busy with a spinning kernel: a stand-in for a model server on a
shared GPU, for bench/gpu_agent_check.sh.

Run: ``python3 bench/gpu_hold.py MIB SECONDS [--busy]``.
"""

from __future__ import annotations

import ctypes
import sys
import time

# A kernel that spins for a while: PTX the driver JIT-compiles (sm_52 and later).
SPIN_PTX = b"""
.version 6.0
.target sm_52
.address_size 64
.visible .entry spin(.param .u64 cycles) {
  .reg .u64 %rd<4>;
  .reg .pred %p;
  ld.param.u64 %rd1, [cycles];
  mov.u64 %rd2, %clock64;
LOOP:
  mov.u64 %rd3, %clock64;
  sub.u64 %rd3, %rd3, %rd2;
  setp.lt.u64 %p, %rd3, %rd1;
  @%p bra LOOP;
  ret;
}
"""


def check(result: int, what: str) -> None:
    if result != 0:
        raise SystemExit(f"gpu_hold: {what} failed with CUDA error {result}")


def main() -> int:
    mib, seconds, busy = int(sys.argv[1]), float(sys.argv[2]), "--busy" in sys.argv
    cuda = ctypes.CDLL("libcuda.so.1")
    check(cuda.cuInit(0), "cuInit")
    device, context, memory = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    check(cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
    check(cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device), "cuCtxCreate")
    check(cuda.cuMemAlloc_v2(ctypes.byref(memory), ctypes.c_size_t(mib * 2**20)), "cuMemAlloc")
    function = ctypes.c_void_p()
    if busy:
        module = ctypes.c_void_p()
        check(cuda.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(SPIN_PTX)), "cuModuleLoadData")
        check(cuda.cuModuleGetFunction(ctypes.byref(function), module, b"spin"), "cuModuleGetFunction")
    print(f"holding {mib} MiB{' and spinning' if busy else ''} for {seconds:g}s", flush=True)
    deadline = time.time() + seconds
    while time.time() < deadline:
        if busy:
            cycles = ctypes.c_uint64(200_000_000)
            params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.pointer(cycles), ctypes.c_void_p))
            check(cuda.cuLaunchKernel(function, 132, 1, 1, 128, 1, 1, 0, None, params, None), "cuLaunchKernel")
            check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
        else:
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
