"""The Markdown/HTML reports on small run directories built through the real RunStore."""

from __future__ import annotations

import json
import re

import pytest

from safebench.errors import UsageError
from safebench.reports import write_reports

NASTY = "<script>document.title='pwned'</script> | naïve 日本語 `code` *star* \n second line"


def test_single_run_report_has_every_section(synthetic_run):
    written = write_reports([synthetic_run], n_boot=200)
    md = written["markdown"].read_text(encoding="utf-8")
    for heading in ("Safety and scores", "Ground truth (tiny-world oracle)", "Score distributions",
                    "Over-refusal", "Safety per harm category", "Paired tests against the baseline", "LLM judge"):
        assert f"## {heading}" in md
    assert "| sft | tiny-harmful | harmful | 30 x 2 |" in md
    assert "| tiny-harmful | sft | repo | 30 |" in md  # the paired test row
    assert "| privacy |" in md and "| crime |" in md
    names = {p.name for p in written["figures"]}
    assert {"safety-rates.png", "scatter-tiny-harmful.png", "prompt-cost-tiny-harmful.png",
            "training-curves.png"} <= names
    assert "frontier.png" not in names  # no sweep variants in this run
    for path in written["figures"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = written["html"].read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == len(written["figures"])
    assert "src=\"http" not in html
    # The only scripts: the explorer's data (not run) and its code.
    assert re.findall(r"<script([^>]*)>", html) == [' type="application/json" id="explorer-data"', ""]
    # Strict JSON: NaN would make this raise.
    json.loads(written["metrics"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_report_numbers_come_from_the_run(runs, tmp_path):
    rows = [{"method": "sft", "suite": "s", "prompt_id": f"p{i}", "sample_idx": 0, "response": "r",
             "reward": 1.0, "cost": 1.0 if i < 3 else -1.0} for i in range(4)]
    run = runs.make(tmp_path / "run", rows)
    md = write_reports([run], n_boot=100)["markdown"].read_text(encoding="utf-8")
    assert "| sft | s | harmful | 4 x 1 | 25.0 % [" in md
    assert "no pair of methods to compare" in md


def test_report_survives_empty_suite_no_verdicts_and_non_ascii(runs, tmp_path):
    rows = runs.rows(n_prompts=6, k=1)
    rows[0]["response"] = NASTY
    rows[0]["cost"] = 5.0  # the most unsafe sft response, so it is shown as the example
    run = runs.make(tmp_path / "run", rows, suites={"empty-suite": "harmful", "empty-benign": "over-refusal"})
    runs.judge(run, [{"method": "repo", "suite": "tiny-harmful", "prompt_id": "h000", "protocol": "pairwise",
                      "criterion": "harmlessness", "order_ab": "AB", "value": runs.pairwise_answer("AB", 1.0)}])
    written = write_reports([run], n_boot=100)
    md = written["markdown"].read_text(encoding="utf-8")
    assert "Suites with no samples: empty-benign, empty-suite." in md
    assert "| sft | no verdicts | 0 |" in md
    assert "| repo | harmlessness | 1 | 0 |" in md
    # Model text is one escaped line in Markdown: no raw tag, no broken table.
    assert "&lt;script&gt;" in md and "<script>" not in md
    assert "naïve 日本語" in md
    html = written["html"].read_text(encoding="utf-8")
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in html
    assert "naïve 日本語" in html


def test_report_of_a_run_without_samples(runs, tmp_path):
    run = runs.make(tmp_path / "run", [], suites={"tiny-harmful": "harmful"})
    written = write_reports([run], n_boot=50)
    md = written["markdown"].read_text(encoding="utf-8")
    assert "_no scored samples_" in md and "_no figures" in md
    assert written["figures"] == []


def test_comparison_across_runs(runs, tmp_path):
    first = runs.make(tmp_path / "a" / "run", runs.rows(seed=1, n_prompts=10))
    second = runs.make(tmp_path / "b" / "run", runs.rows(seed=2, n_prompts=10,
                                                             unsafe_share={"sft": 0.5, "repo": 0.6}))
    with pytest.raises(UsageError, match="--out"):
        write_reports([first, second])
    written = write_reports([first, second], tmp_path / "cmp", n_boot=100)
    md = written["markdown"].read_text(encoding="utf-8")
    # Runs whose directories share a name get distinct labels.
    assert "| run | sft | tiny-harmful |" in md and "| run-2 | sft | tiny-harmful |" in md
    assert "| tiny-harmful | run/repo | run-2/repo |" in md  # the same method across runs, paired


def test_sweep_variants_get_a_frontier(runs, tmp_path):
    rows = runs.rows(n_prompts=8, k=1)
    for beta, shift in (("0.01", -0.5), ("0.1", 0.5)):
        rows += [dict(r, method=f"sacpo[beta_over_lambda={beta}]", cost=r["cost"] + shift)
                 for r in rows if r["method"] == "repo"]
    written = write_reports([runs.make(tmp_path / "run", rows)], n_boot=50)
    assert "frontier.png" in {p.name for p in written["figures"]}


def test_bad_input_is_a_usage_error(runs, tmp_path):
    with pytest.raises(UsageError, match="no such run directory"):
        write_reports([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no manifest.json"):
        write_reports([tmp_path / "empty"])
    broken = runs.make(tmp_path / "broken", runs.rows(n_prompts=2, k=1))
    (broken / "manifest.json").write_text('{"evaluations": [{"method": "sft"}]}')
    with pytest.raises(UsageError, match=r"evaluations\[0\].suite' is missing"):
        write_reports([broken])


def test_ppo_diagnostics_get_panels_of_their_own():
    from safebench.reports.figures import curve_panels

    names = ["approx_kl", "clip_fraction", "cost", "cost_explained_variance", "entropy", "kl", "lambda",
             "reward", "reward_explained_variance"]
    assert curve_panels(names) == [
        ("reward", ["reward"]), ("cost", ["cost"]), ("lambda", ["lambda"]), ("KL", ["kl"]),
        ("PPO update", ["approx_kl", "clip_fraction"]), ("entropy", ["entropy"]),
        ("explained variance", ["cost_explained_variance", "reward_explained_variance"]),
    ]
