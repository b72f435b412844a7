"""The environment a run records and what `safebench check` reports as changed."""

from __future__ import annotations

from safebench import environment


def test_differences_name_versions_threads_and_cpu_flags():
    before = {"versions": {"torch": "2.13.0", "python": "3.11.7"}, "torch_threads": 1,
              "cpu": {"model": "Xeon A", "flags": ["avx2", "avx512f"]}}
    now = {"versions": {"torch": "2.12.0", "python": "3.11.7", "vllm": "0.32.0"}, "torch_threads": 2,
           "cpu": {"model": "Xeon A", "flags": ["avx2", "amx_tile"]}}
    assert environment.differences(before, now) == [
        "torch 2.13.0 -> 2.12.0", "torch threads 1 -> 2", "CPU flags -avx512f +amx_tile"]
    assert environment.differences(before, before) == []
    # what one side did not record is not a difference
    assert environment.differences({"versions": {}, "torch_threads": None, "cpu": None}, now) == []


def test_a_manifest_records_the_cpu_and_its_numeric_flags():
    cpu = environment.cpu()
    assert cpu["model"] and set(cpu["flags"]) <= set(environment.NUMERIC_CPU_FLAGS)
    manifest = {"versions": {"python": "3.11", "safebench": "0.1.0"},
                "environment": {"torch_threads": 1, "OMP_NUM_THREADS": "1", "cpu": cpu}}
    assert environment.of_manifest(manifest) == {"versions": {"python": "3.11"}, "torch_threads": 1, "cpu": cpu}
