"""The MFU denominator shared by the benchmarks: a sustained square-matmul rate measured
in the same process, on the same machine, right before the workload."""

from __future__ import annotations

import time

import torch


def matmul_flops(dtype: torch.dtype = torch.bfloat16, n: int = 1024, seconds: float = 2.0) -> float:
    """Sustained FLOP/s of an n×n×n matmul in `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):  # warm-up: allocator and kernel selection
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)
