"""The MFU denominator shared by the benchmarks: the best sustained square-matmul rate of several
timed runs, measured in the same process and on the same machine as the workload.

One short measurement moves with the load of shared cores (a busy neighbour halves it, and an MFU
over that figure doubles), so the rate is the best of REPEATS runs of SECONDS each on n = N:
the machine's rate when it was least disturbed, the denominator an MFU should have. Benchmarks
measure it before and after their workload and keep the higher.
"""

from __future__ import annotations

import time

import torch

N, SECONDS, REPEATS = 2048, 1.5, 5


def matmul_flops(dtype: torch.dtype = torch.bfloat16, n: int = N, seconds: float = SECONDS,
                 repeats: int = REPEATS) -> float:
    """Best sustained FLOP/s of an n×n×n matmul in `dtype` over `repeats` runs of `seconds` each."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):  # warm-up: allocator and kernel selection
        a @ b
    best = 0.0
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best


def describe(dtype: torch.dtype = torch.bfloat16) -> str:
    """How `matmul_flops` measured, for a benchmark's printout and results."""
    return (f"best of {REPEATS} runs of {SECONDS} s of a {N}^3 {str(dtype).removeprefix('torch.')} matmul, "
            "before and after the workload")
