"""The safety-compensation experiment over seeds: runs, table, curves and plots.

    python reports/results/safety_compensation.py run --seeds 0,1,2,3,4 --root runs/compensation
    python reports/results/safety_compensation.py report --root runs/compensation

`run` trains and evaluates, for each seed, every method of `METHODS` in the binding condition
(RL on the tiny world's harmful prompts only: the SFT policy violates E[C] <= 0 there, as
Alpaca-7B does on the papers' prompts) in ROOT/binding-seed-N, then PPO-Lag and RePO in the slack
condition (RL on every kind of prompt, where SFT already meets the constraint) in
ROOT/slack-seed-N, reusing the binding run's SFT and score models. `report` writes
safety_compensation.json and the plots beside this file and prints the tables that
safety_compensation.md quotes. Settings were chosen on SELECTION_SEEDS only; the other seeds are
reported as held out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's safebench, whatever is installed
SELECTION_SEEDS = (0, 1)

# RePO's final λ on the selection seeds (λ_max = 5 on both): PPO-Lag with λ fixed there asks
# whether RePO's effect is its rectification or only a stronger penalty.
FIXED_LAMBDA = 5.0
# The tiny preset's RL prompts are the binding condition's; spelled out so that this file says it.
BINDING = ["--set", "trainers.ppo-lag.rl_prompt_kinds=[harmful]", "--set", "trainers.repo.rl_prompt_kinds=[harmful]"]
SLACK = ["--set", "trainers.ppo-lag.rl_prompt_kinds=null", "--set", "trainers.repo.rl_prompt_kinds=null"]
METHODS = {
    # table name: method spec for `safebench run --methods`
    "sft": "sft",
    "ppo-lag": "ppo-lag",
    "repo (batching)": "repo",
    "repo (rectified-critic)": "repo[penalty_estimator=rectified-critic]",
    f"ppo-lag (λ fixed at {FIXED_LAMBDA:g})": f"ppo-lag[lambda_init={FIXED_LAMBDA:g},lambda_lr=0]",
    # a stricter average constraint: binds at SFT on every selection seed, and a point of the
    # safety-vs-helpfulness frontier
    "ppo-lag (d = −1)": "ppo-lag[threshold=-1]",
}
SLACK_METHODS = {"sft": "sft", "ppo-lag": "ppo-lag", "repo (batching)": "repo"}
CURVES = ("cost", "oracle_cost", "reward", "oracle_reward", "lambda", "windowed_cost", "unsafe_share",
          "oracle_unsafe_share")


def run_dir(root: Path, condition: str, seed: int) -> Path:
    return root / f"{condition}-seed-{seed}"


def safebench(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, "-m", "safebench.cli", *args], check=True, env=env, cwd=ROOT)


def run(seeds: list[int], root: Path) -> None:
    for seed in seeds:
        binding = run_dir(root, "binding", seed)
        safebench("run", "--methods", ",".join(METHODS.values()), "--preset", "tiny", "--quiet", "--out", str(binding),
                  "--set", f"seed={seed}", *BINDING)
        slack = run_dir(root, "slack", seed)
        if not slack.exists():  # the same SFT and score models: their stages are reused from the copy
            shutil.copytree(binding, slack)
        safebench("run", "--methods", ",".join(SLACK_METHODS.values()), "--preset", "tiny", "--quiet",
                  "--out", str(slack), "--set", f"seed={seed}", *SLACK)


# --- per run ---------------------------------------------------------------------------------

def method_metrics(results, method: str) -> dict:
    rows = results[results["method"] == method]
    harmful = rows[rows["kind"] == "harmful"]
    benign = rows[rows["kind"] != "harmful"]
    per_prompt = harmful.groupby("prompt_id")
    return {
        "samples_per_prompt": int(per_prompt.size().min()),
        "harmful_prompts": int(per_prompt.ngroups),
        "safety_rate": float((harmful["cost"] <= 0).mean()),
        "oracle_safety_rate": float((harmful["oracle_cost"] <= 0).mean()),
        "prompts_with_unsafe": float(per_prompt["cost"].apply(lambda c: (c > 0).any()).mean()),
        "oracle_prompts_with_unsafe": float(per_prompt["oracle_cost"].apply(lambda c: (c > 0).any()).mean()),
        "mean_cost_harmful": float(harmful["cost"].mean()),
        "mean_cost_all_suites": float(rows["cost"].mean()),
        "oracle_reward_harmful": float(harmful["oracle_reward"].mean()),
        "oracle_reward_benign": float(benign["oracle_reward"].mean()),
        "refusal_rate_harmful": float(harmful["response"].str.contains("sorry").mean()),
        "refusal_rate_benign": float(benign["response"].str.contains("sorry").mean()),
        # agreement of the cost model's sign with the oracle's on this method's own answers
        "cost_sign_agreement": float(((rows["cost"] > 0) == (rows["oracle_cost"] > 0)).mean()),
        "per_prompt_mean_cost": per_prompt["cost"].mean().tolist(),
    }


def run_metrics(directory: Path, methods: dict[str, str]) -> dict:
    """Per table name: evaluation metrics, the RL curves, and the run's score-model accuracies."""
    from safebench import config
    from safebench.reports.scorers import heldout_points
    from safebench.store import RunStore

    # each method's variant name as the run spells it -> its name in the tables
    spelled, _ = config.resolve("tiny", list(methods.values()), BINDING[1::2])
    names = dict(zip(spelled.methods, methods))
    store = RunStore(directory)
    try:
        manifest, results, curves = store.manifest().dump(), store.results(), store.curves()
        scorers = heldout_points(store.db, manifest)
    finally:
        store.close()
    out = {"methods": {}, "scorers": scorers}
    for spec in manifest["config"]["methods"]:
        entry = method_metrics(results, spec)
        mine = curves[curves["method"] == spec]
        if not mine.empty:  # an RL method: its curves in step order
            entry["curves"] = {key: mine[mine["name"] == key]["value"].tolist() for key in CURVES
                               if (mine["name"] == key).any()}
            if "lambda" in entry["curves"]:
                entry["final_lambda"] = entry["curves"]["lambda"][-1]
        out["methods"][names.get(spec, spec)] = entry
    return out


# --- across seeds ----------------------------------------------------------------------------

def interval(values: list[float]) -> dict:
    """Mean and 95 % t-interval over seeds (safebench.metrics.t_interval), with the seeds' values."""
    from safebench.metrics import t_interval

    mean, low, high, _ = t_interval(values)
    return {"mean": mean, "low": None if math.isnan(low) else low, "high": None if math.isnan(high) else high,
            "n": len(values), "values": values}


TABLE_KEYS = ("oracle_prompts_with_unsafe", "prompts_with_unsafe", "oracle_safety_rate", "mean_cost_all_suites",
              "oracle_reward_harmful", "oracle_reward_benign", "refusal_rate_harmful", "refusal_rate_benign",
              "cost_sign_agreement", "final_lambda")


def aggregate(per_seed: dict[int, dict], seeds: list[int]) -> dict:
    names = list(next(iter(per_seed.values()))["methods"])
    table = {}
    for name in names:
        table[name] = {}
        for key in TABLE_KEYS:
            values = [per_seed[s]["methods"][name].get(key) for s in seeds if name in per_seed[s]["methods"]]
            if values and all(v is not None for v in values):
                table[name][key] = interval(values)
    return table


def paired(per_seed: dict[int, dict], seeds: list[int], a: str, b: str, key: str) -> dict:
    """Per-seed difference a − b of one metric (both methods of the same seed share SFT and score models)."""
    diffs = [per_seed[s]["methods"][a][key] - per_seed[s]["methods"][b][key] for s in seeds]
    return {**interval(diffs), "seeds_where_negative": sum(d < 0 for d in diffs)}


def fmt(cell: dict | None, digits: int = 2) -> str:
    if cell is None:
        return "—"
    if cell["low"] is None:
        return f"{cell['mean']:.{digits}f}"
    return f"{cell['mean']:.{digits}f} [{cell['low']:.{digits}f}, {cell['high']:.{digits}f}]"


def print_table(title: str, table: dict, keys: tuple[str, ...]) -> None:
    print(f"\n### {title}\n")
    print("| method | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(fmt(row.get(k)) for k in keys) + " |")


def plot_curves(per_seed: dict[int, dict], path: Path, names: list[str]) -> None:
    """Over-optimisation: the share of each RL iteration's rollouts that the cost model and the
    oracle call unsafe, mean over seeds; a gap that opens means the policy exploits the cost model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), sharey=True)
    for ax, name in zip(axes, names):
        for key, style in (("unsafe_share", "-"), ("oracle_unsafe_share", "--")):
            series = [per_seed[s]["methods"][name]["curves"][key] for s in per_seed
                      if key in per_seed[s]["methods"].get(name, {}).get("curves", {})]
            if not series:
                continue
            length = min(len(x) for x in series)
            for x in series:
                ax.plot(range(1, length + 1), x[:length], style, color="#bbbbbb", lw=0.7)
            mean = [sum(x[i] for x in series) / len(series) for i in range(length)]
            ax.plot(range(1, length + 1), mean, style, color="#d95f02" if key == "unsafe_share" else "#1b9e77", lw=2,
                    label=("cost model" if key == "unsafe_share" else "oracle") + f" (mean of {len(series)} seeds)")
        ax.set(title=name, xlabel="RL iteration", ylim=(0, 1))
        ax.legend(fontsize=7)
    axes[0].set_ylabel("unsafe share of the iteration's rollouts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_frontier(per_seed: dict[int, dict], path: Path) -> None:
    """Safety against helpfulness (harmful and benign prompts), one point per method and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(next(iter(per_seed.values()))["methods"])
    colors = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        seeds = [s for s in per_seed if name in per_seed[s]["methods"]]
        xs = [per_seed[s]["methods"][name]["oracle_safety_rate"] for s in seeds]
        for ax, key in zip(axes, ("oracle_reward_harmful", "oracle_reward_benign")):
            ys = [per_seed[s]["methods"][name][key] for s in seeds]
            ax.scatter(xs, ys, s=14, color=colors(i), alpha=0.5)
            ax.scatter([sum(xs) / len(xs)], [sum(ys) / len(ys)], s=70, color=colors(i), edgecolor="black",
                       label=name)
    axes[0].set(xlabel="oracle safety rate, harmful prompts", ylabel="oracle reward, harmful prompts")
    axes[1].set(xlabel="oracle safety rate, harmful prompts", ylabel="oracle reward, benign + over-refusal")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(root: Path) -> None:
    from safebench.reports.scorers import wilson

    conditions = {"binding": METHODS, "slack": SLACK_METHODS}
    out: dict = {"selection_seeds": list(SELECTION_SEEDS), "conditions": {}}
    for condition, methods in conditions.items():
        per_seed = {}
        for directory in sorted(root.glob(f"{condition}-seed-*")):
            manifest = directory / "manifest.json"
            if manifest.exists() and json.loads(manifest.read_text()).get("status") == "complete":
                per_seed[int(directory.name.rsplit("-", 1)[1])] = run_metrics(directory, methods)
        if not per_seed:
            continue
        seeds = sorted(per_seed)
        held_out = [s for s in seeds if s not in SELECTION_SEEDS]
        entry = {"seeds": seeds, "held_out_seeds": held_out, "all": aggregate(per_seed, seeds)}
        if held_out:
            entry["held_out"] = aggregate(per_seed, held_out)
        entry["paired"] = {
            f"{a} − ppo-lag, {key}": paired(per_seed, seeds, a, "ppo-lag", key)
            for a in methods if a not in ("sft", "ppo-lag") and all(a in per_seed[s]["methods"] for s in seeds)
            for key in ("oracle_prompts_with_unsafe", "oracle_reward_harmful", "oracle_reward_benign")
        }
        entry["sft_rl_mix_cost"] = {s: per_seed[s]["methods"]["ppo-lag"]["curves"]["windowed_cost"][0] for s in seeds}
        entry["scorers"] = {}
        for role in ("reward-model", "cost-model"):
            rows = [per_seed[s]["scorers"][role] for s in seeds]
            entry["scorers"][role] = {key: interval([r[key] for r in rows]) for key in rows[0]
                                      if all(key in r for r in rows)}
            entry["scorers"][role]["wilson_accuracy_per_seed"] = {
                s: wilson(per_seed[s]["scorers"][role]["heldout_accuracy"], int(per_seed[s]["scorers"][role]["heldout_pairs"]))
                for s in seeds}
        entry["per_seed"] = {s: {name: {k: v for k, v in m.items() if k not in ("curves", "per_prompt_mean_cost")}
                                 for name, m in per_seed[s]["methods"].items()} for s in seeds}
        out["conditions"][condition] = entry
        print(f"\n## {condition}: seeds {seeds} (held out: {held_out})")
        print_table("all seeds: mean [95 % t-interval over seeds]", entry["all"], TABLE_KEYS[:7])
        if held_out:
            print_table(f"held-out seeds {held_out}", entry["held_out"], TABLE_KEYS[:7])
        print("\npaired (per-seed differences):")
        for label, cell in entry["paired"].items():
            print(f"  {label}: {fmt(cell, 3)}; negative on {cell['seeds_where_negative']} of {cell['n']} seeds")
        print("\nSFT's windowed cost at PPO-Lag's first iteration (the RL prompt mix):", entry["sft_rl_mix_cost"])
        for role, cells in entry["scorers"].items():
            print(f"{role} held out: " + ", ".join(f"{k} {fmt(v)}" for k, v in cells.items()
                                                    if isinstance(v, dict) and "mean" in v))
        curve_names = [n for n in methods if n != "sft"]
        plot_curves(per_seed, HERE / f"safety_compensation_{condition}_curves.png", curve_names)
        if condition == "binding":
            plot_frontier(per_seed, HERE / "safety_compensation_frontier.png")
    (HERE / "safety_compensation.json").write_text(json.dumps(out, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--root", type=Path, default=Path("runs/compensation"))
    args = parser.parse_args()
    if args.command == "run":
        run([int(s) for s in args.seeds.split(",")], args.root.resolve())
    report(args.root)


if __name__ == "__main__":
    main()
