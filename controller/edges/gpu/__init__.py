"""The GPU node edge: what NVML says each GPU process uses (nvml), and which pod a process is (pods)."""
