"""What machine ran the benchmark, and its measured fp32 matrix-multiply peak (the yardstick for FLOP/s)."""

from __future__ import annotations

import os
import platform
import time
from typing import Optional

import numpy as np
import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    info = {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}",
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)  # > cores: other work shared the CPU
    except OSError:
        pass
    return info


def machine_line(info: dict, peak: Optional[dict]) -> str:
    line = (f"Machine: {info['cpu']}, {info['logical_cores']} logical cores, torch {info['torch']} "
            f"({info['torch_threads']} threads), numpy {info['numpy']}, Python {info['python']}, "
            f"GPU: {info['gpu'] or 'none'}")
    if peak:
        line += f"; fp32 matmul peak {peak['gflops']:.0f} GFLOP/s ({peak['threads']} threads, n={peak['n']})"
    if "load_average_1min" in info:
        line += f"; load average {info['load_average_1min']} at start"
    return line


def matmul_peak(threads: int, n: int = 2048, repeats: int = 7) -> dict:
    """fp32 ``torch.mm`` of two n x n matrices on the CPU with ``threads`` threads: best and median GFLOP/s.

    The best run is the peak (a run can only be slowed down, by other work or frequency changes).
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        out = torch.empty(n, n)
        for _ in range(2):
            torch.mm(a, b, out=out)
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            rates.append(2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    finally:
        torch.set_num_threads(saved)
    return {"gflops": max(rates), "median_gflops": float(np.median(rates)), "threads": threads, "n": n}


def cuda_matmul_peak(n: int = 8192, repeats: int = 10, tf32: bool = False) -> dict:
    """fp32 (or TF32) ``torch.mm`` on the GPU, timed with CUDA events: best GFLOP/s."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(n, n, device="cuda")
        b = torch.randn(n, n, device="cuda")
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        rates = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            rates.append(2 * n ** 3 / (start.elapsed_time(end) / 1e3) / 1e9)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return {"gflops": max(rates), "median_gflops": float(np.median(rates)), "n": n, "tf32": tf32}
