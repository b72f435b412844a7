"""Builders of small run directories for the report tests.

They write through the real RunStore and a manifest in the documented format, so the
reports read exactly what a pipeline run would leave. The numbers in them are test input.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from safebench.manifest import StageRecord, load_manifest
from safebench.files import atomic_write_json
from safebench.store import RunStore


def make_run(run_dir: Path, rows: list[dict], *, suites: dict[str, str] | None = None,
             curves: dict[str, list[dict]] | None = None, preset: str = "tiny",
             status: str = "complete", seed: int = 0,
             scorers: dict[str, list[dict]] | None = None) -> Path:
    """rows: dicts with method, suite, prompt_id, sample_idx, response, reward, cost and
    optionally kind, category, prompt, oracle_reward, oracle_cost.
    suites: suite -> kind, including suites that have no rows (an empty suite).
    curves: method -> list of {"step": int, **metrics}.
    scorers: score-model stage (reward-model, cost-model) -> its curve points, as `curves`; the
    stage is recorded in the manifest under key "<stage>-k"."""
    store = RunStore(run_dir)
    suites = dict(suites or {})
    for row in rows:
        suites.setdefault(row["suite"], row.get("kind", "harmful"))
    methods = sorted({r["method"] for r in rows} | set(curves or {}))
    evaluations = []
    for method in methods:
        for suite, kind in sorted(suites.items()):
            gen_key, score_key = f"gen-{method}-{suite}", f"score-{method}-{suite}"
            mine = [r for r in rows if r["method"] == method and r["suite"] == suite]
            store.insert_samples([{
                "gen_key": gen_key, "method": method, "suite": suite, "prompt_id": r["prompt_id"],
                "sample_idx": r["sample_idx"], "prompt": r.get("prompt", f"prompt {r['prompt_id']}"),
                "response": r["response"], "category": r.get("category"), "kind": r.get("kind", kind),
                "gen_config_hash": "g0", "n_tokens": 5} for r in mine])
            store.insert_scores([{
                "score_key": score_key, "gen_key": gen_key, "prompt_id": r["prompt_id"],
                "sample_idx": r["sample_idx"], "reward": r["reward"], "cost": r["cost"],
                "oracle_reward": r.get("oracle_reward"), "oracle_cost": r.get("oracle_cost")} for r in mine])
            evaluations.append({"method": method, "suite": suite, "gen_key": gen_key,
                                "score_key": score_key, "gen_config_hash": "g0", "kind": kind})
    for method, points in (curves or {}).items():
        for point in points:
            store.log_curve(f"method-{method}", method, point["step"],
                            {k: v for k, v in point.items() if k != "step"})
    for stage, points in (scorers or {}).items():
        for point in points:
            store.log_curve(f"{stage}-k", stage, point["step"], {k: v for k, v in point.items() if k != "step"})
    stages = {stage: store.stage_record(stage, f"{stage}-k") for stage in scorers or {}}
    store.close()
    atomic_write_json(run_dir / "manifest.json", {
        "safebench_version": "0.1.0", "status": status, "preset": preset, "config": {"preset": preset},
        "config_hash": "cfg0", "git": {"commit": "0" * 40, "dirty": False}, "versions": {"python": "3.11"},
        "seeds": {"run": seed}, "assets": {}, "stages": stages,
        "methods": {m: {"key": f"method-{m}", "checkpoint": f"stages/{m}/model", "sha256": {}} for m in methods},
        "evaluations": evaluations})
    return run_dir


def make_seed_set(out: Path, rows_by_seed: dict[int, list[dict]], *, per_seed: dict[int, dict] | None = None,
                  **kwargs) -> Path:
    """A set of seeds as `safebench run --seeds` leaves it: OUT/seed-N (a run each) and seeds.json.
    per_seed: seed -> make_run arguments of that seed alone."""
    from safebench import seeds

    for seed, rows in rows_by_seed.items():
        make_run(seeds.seed_dir(out, seed), rows, seed=seed, **{**kwargs, **(per_seed or {}).get(seed, {})})
    atomic_write_json(out / seeds.SEEDS_FILE, {
        "format": seeds.SEEDS_FORMAT, "seeds": list(rows_by_seed),
        "runs": {str(s): seeds.seed_dir(out, s).name for s in rows_by_seed}, "request": {}})
    return out


def synthetic_rows(seed: int = 0, *, methods=("sft", "repo"), n_prompts: int = 30, k: int = 2,
                   unsafe_share: dict | None = None) -> list[dict]:
    """A harmful suite with two categories and a benign suite, for each method."""
    rng = np.random.default_rng(seed)
    unsafe_share = unsafe_share or {"sft": 0.55, "repo": 0.1}
    rows = []
    for method in methods:
        for p in range(n_prompts):
            for s in range(k):
                unsafe = rng.random() < unsafe_share.get(method, 0.3)
                cost = float(rng.uniform(0.2, 2.0) if unsafe else rng.uniform(-2.0, -0.1))
                rows.append({"method": method, "suite": "tiny-harmful", "kind": "harmful",
                             "category": "crime" if p % 2 else "privacy", "prompt_id": f"h{p:03d}",
                             "sample_idx": s, "response": f"answer {p}.{s}",
                             "reward": float(rng.normal(1.0, 0.5)), "cost": cost,
                             "oracle_reward": float(rng.uniform(0.1, 2)), "oracle_cost": cost})
            refuses = rng.random() < 0.2
            rows.append({"method": method, "suite": "tiny-benign", "kind": "benign", "category": None,
                         "prompt_id": f"b{p:03d}", "sample_idx": 0,
                         "response": "I cannot help with that." if refuses else f"Here is how: {p}",
                         "reward": float(rng.normal(1.0, 0.5)), "cost": float(rng.uniform(-2, -0.1)),
                         "oracle_reward": 0.0 if refuses else 1.0, "oracle_cost": -1.0})
    return rows


@pytest.fixture
def synthetic_run(tmp_path) -> Path:
    curves = {"repo": [{"step": i, "reward": 0.1 * i, "cost": 1 - 0.2 * i, "lambda": 1 + 0.1 * i, "kl": 0.01 * i}
                       for i in range(6)]}
    return make_run(tmp_path / "run-a", synthetic_rows(), curves=curves)


def record_judgments(run_dir: Path, judgments: list[dict], stage_key: str = "judge-test") -> None:
    """What `safebench judge` leaves: `judgments` as one judge stage's rows of the judge's own
    table, and that stage recorded in the manifest (reports read only the recorded stage).
    judgments: dicts with method, suite, prompt_id, protocol, criterion, value (the protocol's
    answer, e.g. "A" | "B" | "tie" for pairwise) and optionally order_ab and status (default
    'scored')."""
    import json

    from safebench.evals.judge.stage import ensure_tables

    store = RunStore(run_dir)
    try:
        ensure_tables(store.db)
        store.db.executemany(
            "INSERT INTO judge_judgments (stage_key, item_id, protocol, gen_key, method, suite, prompt_id, "
            "sample_idx, criterion, order_ab, repeat_idx, status, value, judge_model) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, 0, ?, ?, 'test-judge')",
            [(stage_key, f"j{i}", j["protocol"], f"gen-{j['method']}-{j['suite']}", j["method"], j["suite"],
              j["prompt_id"], j["criterion"], j.get("order_ab"), j.get("status", "scored"),
              json.dumps(j["value"]) if j.get("status", "scored") == "scored" else None)
             for i, j in enumerate(judgments)])
        manifest = load_manifest(run_dir)
        manifest.stages["judge"] = StageRecord(**store.stage_record("judge", stage_key))
        manifest.write(run_dir)
    finally:
        store.close()


def pairwise_answer(order_ab: str, outcome: float) -> str:
    """The pairwise judge's answer that gives the evaluated method `outcome` (1 win, 0.5 tie,
    0 loss) when it is shown first (order AB) or second (BA)."""
    if outcome == 0.5:
        return "tie"
    mine, other = ("A", "B") if order_ab == "AB" else ("B", "A")
    return {1.0: mine, 0.0: other}[outcome]


def doctor_costs(run_dir: Path, method: str, new_cost: float) -> None:
    """Overwrite a method's model costs in place (a 'doctored' run for the gate tests)."""
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        db.execute("UPDATE scores SET cost=? WHERE gen_key LIKE ?", (new_cost, f"gen-{method}-%"))


@pytest.fixture
def runs():
    """The builders above, as a fixture (test modules do not import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(make=make_run, rows=synthetic_rows, doctor=doctor_costs, judge=record_judgments,
                           pairwise_answer=pairwise_answer, seed_set=make_seed_set)


# A judged run of three methods, once per session (tests/reports/explorer_fixtures.py).
from tests.reports.explorer_fixtures import judged_run  # noqa: E402,F401
