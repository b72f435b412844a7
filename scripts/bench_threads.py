"""Time training steps and generation of a checkpoint at 1 thread and at all cores.

    python scripts/bench_threads.py CHECKPOINT [--dtype bfloat16] [--threads 1,2] [--repeats 3]

Each thread count runs in a fresh process with OMP_NUM_THREADS set before torch loads, the
way `safebench` applies its choice. Prints one JSON line per setting, with the load average
(the numbers mean little on a busy machine). Used to pick threads.SMALL_MODEL_MAX_PARAMETERS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def measure(checkpoint: str, dtype: str, batch: int, length: int, new_tokens: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype))
    parameters = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, length))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def train_step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def generate():
        with torch.no_grad():
            model.generate(ids[:, :16], max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0)

    out = {"parameters": parameters, "threads": torch.get_num_threads()}
    for name, work in (("train_step_s", train_step), ("generate_s", generate)):
        work()  # warm-up: allocations, first-call kernels
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        out[name] = round(sorted(times)[len(times) // 2], 4)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", default=f"1,{len(os.sched_getaffinity(0))}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.checkpoint, args.dtype, args.batch, args.length, args.new_tokens, args.repeats)))
        return 0
    for threads in args.threads.split(","):
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        child = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env,
                               capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result.update(dtype=args.dtype, batch=args.batch, length=args.length,
                      load_average_1m=round(os.getloadavg()[0], 2))
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
