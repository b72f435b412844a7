"""What about the machine can change a run's numbers, recorded beside them and compared.

The same code, seed and pinned packages give other floating-point results on another CPU
(other vector instructions take other kernels) or another thread count (other summation
order). Run manifests record this (`environment`, `versions`); baselines of `safebench check`
record it too, and the check says when the two differ.
"""

from __future__ import annotations

import platform
from pathlib import Path

# The vector-instruction families torch's CPU kernels dispatch on; other flags do not change numbers.
NUMERIC_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                     "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")


def cpu() -> dict:
    """The CPU model and which of NUMERIC_CPU_FLAGS it has (Linux: /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if flags and model:
                break
    except OSError:
        pass
    return {"model": model, "flags": [f for f in NUMERIC_CPU_FLAGS if f in flags]}


def of_manifest(manifest: dict) -> dict:
    """The comparable environment of a run: package versions, torch's thread count, the CPU.
    safebench's own version is left out: the code is what the gate tests, not its environment."""
    environment = manifest.get("environment") or {}
    return {"versions": {k: v for k, v in (manifest.get("versions") or {}).items() if k != "safebench"},
            "torch_threads": environment.get("torch_threads"), "cpu": environment.get("cpu")}


def differences(before: dict, now: dict) -> list[str]:
    """What changed between two `of_manifest` records, one short phrase each; what either side
    did not record is not compared."""
    out = []
    old_versions, new_versions = before.get("versions") or {}, now.get("versions") or {}
    for name in sorted(set(old_versions) & set(new_versions)):
        if old_versions[name] != new_versions[name]:
            out.append(f"{name} {old_versions[name]} -> {new_versions[name]}")
    if None not in (before.get("torch_threads"), now.get("torch_threads")) and \
            before["torch_threads"] != now["torch_threads"]:
        out.append(f"torch threads {before['torch_threads']} -> {now['torch_threads']}")
    old_cpu, new_cpu = before.get("cpu") or {}, now.get("cpu") or {}
    if old_cpu and new_cpu:
        if old_cpu.get("model") != new_cpu.get("model"):
            out.append(f"CPU {old_cpu.get('model')!r} -> {new_cpu.get('model')!r}")
        lost = [f for f in old_cpu.get("flags", []) if f not in new_cpu.get("flags", [])]
        gained = [f for f in new_cpu.get("flags", []) if f not in old_cpu.get("flags", [])]
        if lost or gained:
            out.append("CPU flags " + " ".join([*(f"-{f}" for f in lost), *(f"+{f}" for f in gained)]))
    return out
