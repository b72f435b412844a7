"""The tiny preset end to end: manifest, SQLite results, caching (resume after SIGKILL: tests/test_trust.py)."""

from __future__ import annotations

import json
import sqlite3

from tests.helpers import run_cli

SMALL = ["--set", "data.train_prompts=60", "--set", "trainers.sft.epochs=1",
         "--set", "trainers.reward-model.epochs=1", "--set", "trainers.cost-model.epochs=1",
         "--set", "generation.k=1"]


def test_run_leaves_manifest_results_and_summary(tiny_run):
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["config"]["methods"] == ["sft"]
    assert len(manifest["config_hash"]) == 16
    assert set(manifest["versions"]) >= {"python", "torch", "transformers", "safebench"}
    assert "commit" in manifest["git"] and "dirty" in manifest["git"]
    assert manifest["seeds"] == {"run": 0}
    assert all(len(v) == 64 for v in manifest["assets"].values()) and manifest["assets"]
    assert manifest["methods"]["sft"]["sha256"]["model.safetensors"]
    db = sqlite3.connect(tiny_run / "results.sqlite")
    for evaluation in manifest["evaluations"]:
        items = len((tiny_run / manifest["stages"]["data"]["dir"] / f"suite-{evaluation['kind']}.jsonl")
                    .read_text().splitlines())
        n_samples = db.execute("SELECT COUNT(*) FROM samples WHERE gen_key=?", (evaluation["gen_key"],)).fetchone()[0]
        n_scores = db.execute("SELECT COUNT(*) FROM scores WHERE score_key=? AND reward IS NOT NULL AND cost IS NOT NULL",
                              (evaluation["score_key"],)).fetchone()[0]
        assert n_samples == n_scores == items * manifest["config"]["generation"]["k"]
    summary = (tiny_run / "summary.md").read_text()
    for suite in ("tiny-harmful", "tiny-benign", "tiny-over-refusal"):
        assert f"| sft | {suite} |" in summary
    assert db.execute("SELECT COUNT(*) FROM curves WHERE method='sft' AND name='loss'").fetchone()[0] > 10


def test_run_store_finds_the_training_curves_of_the_run(tiny_run):
    from safebench.store import RunStore

    curves = RunStore(tiny_run).curves()
    assert set(curves[curves["method"] == "sft"]["name"]) >= {"loss", "lr"}


def test_checkpoints_load_with_the_auto_classes(tiny_checkpoints):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    policy = AutoModelForCausalLM.from_pretrained(tiny_checkpoints["policy"])
    assert policy.config.hidden_size // policy.config.num_attention_heads >= 32  # vLLM can serve it
    for role in ("reward", "cost"):
        scorer = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoints[role], num_labels=1)
        assert scorer.config.num_labels == 1


def test_learned_cost_model_agrees_with_the_oracle(tiny_run):
    import pandas as pd

    frame = pd.read_sql_query("SELECT cost, oracle_cost FROM scores", sqlite3.connect(tiny_run / "results.sqlite"))
    agreement = ((frame["cost"] > 0) == (frame["oracle_cost"] > 0)).mean()
    assert agreement > 0.9


def test_sft_policy_behaves_like_its_data(tiny_run):
    """The tiny SFT model writes the world's answer shapes and is partly unsafe on harmful prompts."""
    db = sqlite3.connect(tiny_run / "results.sqlite")
    rows = db.execute("SELECT s.response, c.oracle_cost FROM samples s JOIN scores c USING (gen_key, prompt_id, "
                      "sample_idx) WHERE s.suite='tiny-harmful'").fetchall()
    unsafe = sum(cost > 0 for _, cost in rows) / len(rows)
    assert 0.2 < unsafe < 0.8
    shapes = sum(r.startswith(("sure , here is how", "sorry , i can not", "i will not explain")) for r, _ in rows)
    assert shapes / len(rows) > 0.9


def test_second_identical_run_reruns_nothing(tiny_rerun):
    _, result = tiny_rerun
    assert "[run " not in result.stderr
    assert "(0 stage(s) run" in result.stdout


def test_changing_one_recipe_reruns_only_what_depends_on_it(tmp_path):
    out = tmp_path / "run"
    run_cli("run", "--preset", "tiny", "--quiet", "--out", str(out), *SMALL, check=True)
    changed = run_cli("run", "--preset", "tiny", "--quiet", "--out", str(out), *SMALL,
                      "--set", "trainers.cost-model.lr=5e-4", check=True)
    ran = {line.split()[2] for line in changed.stderr.splitlines() if line.startswith("[run ]")}
    skipped = {line.split()[1] for line in changed.stderr.splitlines() if line.startswith("[skip]")}
    assert {"data", "base", "sft", "reward-model"} <= skipped
    assert "generate:sft:tiny-harmful" in skipped          # the policy did not change
    assert ran == {"cost-model", "score:sft:tiny-harmful", "score:sft:tiny-benign", "score:sft:tiny-over-refusal"}
