"""The explorer's data, the worst cases and the table links/marks in report.html, checked against
SQL on results.sqlite (the browser side is tests/reports/test_explorer_browser.py)."""

from __future__ import annotations

import base64
import hashlib
import html as html_lib
import json
import re
import sqlite3
from urllib.parse import parse_qs

import pytest

from safebench.reports import write_reports
from safebench.reports.explorer import WORST_N, script_json
from tests.reports.explorer_fixtures import ATTACK, ATTACKED

SAMPLES_SQL = ("SELECT s.method, s.suite, s.prompt_id, s.sample_idx, s.response, c.cost FROM samples s "
               "JOIN scores c USING (gen_key, prompt_id, sample_idx)")


def blob(html: str) -> str:
    return re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', html, re.S).group(1)


def links(html: str) -> dict[str, str]:
    """The explorer links of the page: link text -> href (unescaped)."""
    return {html_lib.unescape(re.sub(r"<[^>]+>", "", text)): html_lib.unescape(href)
            for href, text in re.findall(r'<a href="(#explore\?[^"]*)">(.*?)</a>', html, re.S)}


def fragment(href: str) -> dict[str, list[str]]:
    return parse_qs(href.split("?", 1)[1])


def test_model_text_cannot_end_the_data_element(judged_run):
    run, written = judged_run
    html = written["html"].read_text(encoding="utf-8")
    text = blob(html)
    # The payload's "</script>" and "<!--" are \u escapes inside the blob, so the element ends where ours does.
    assert "<" not in text and ">" not in text and "\u2028" not in text
    data = json.loads(text)
    method, suite, prompt_id, sample = ATTACKED
    column = [c["label"] for c in data["columns"]].index(method)
    prompt = [i for i, p in enumerate(data["prompts"]) if data["suites"][p[0]] == suite and p[2] == prompt_id]
    (found,) = [s for s in data["samples"] if s[0] == prompt[0] and s[1] == column and s[2] == sample]
    assert found[3] == ATTACK
    assert json.loads(script_json({"x": "</script>"})) == {"x": "</script>"}


def test_the_only_script_is_the_one_the_csp_allows(judged_run):
    html = judged_run[1]["html"].read_text(encoding="utf-8")
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html).group(1)
    assert "default-src 'none'" in csp and "connect-src" not in csp
    (code,) = re.findall(r"<script>(.*?)</script>", html, re.S)
    digest = base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp
    assert "innerHTML" not in code and "insertAdjacentHTML" not in code and "document.write" not in code


def test_explorer_holds_every_sample_with_its_scores_and_verdicts(judged_run):
    run, written = judged_run
    data = json.loads(blob(written["html"].read_text(encoding="utf-8")))
    with sqlite3.connect(run / "results.sqlite") as db:
        expected = {(m, s, p, i): (r, c) for m, s, p, i, r, c in db.execute(SAMPLES_SQL)}
        harm = dict(((m, p), json.loads(v)) for m, p, v in db.execute(
            "SELECT method, prompt_id, value FROM judge_judgments WHERE status = 'scored'"))
    labels = [c["label"] for c in data["columns"]]
    assert labels == ["sft", "ppo-lag", "repo"]
    assert [c["baseline"] for c in data["columns"]] == [None, 0, 0]
    seen = {}
    harm_at = data["judge_columns"].index("judge_harm")
    for p, c, i, response, reward, cost, *_, judge in data["samples"]:
        suite, _, prompt_id, _ = data["prompts"][p]
        key = (labels[c], data["suites"][suite], prompt_id, i)
        seen[key] = (response, cost)
        if i == 0 and data["suites"][suite] == "tiny-harmful" and (labels[c], prompt_id) in harm:
            assert judge[harm_at] == (1.0 if harm[(labels[c], prompt_id)] == "harmful" else 0.0)
    assert seen.keys() == expected.keys()
    assert all(seen[k][0] == expected[k][0] and seen[k][1] == pytest.approx(expected[k][1], abs=1e-4)
               for k in expected)


def test_worst_cases_are_the_highest_costs_and_the_paired_turns(judged_run):
    run, written = judged_run
    html = written["html"].read_text(encoding="utf-8")
    worst = html[html.index('<section id="worst">'):html.index("</section>")]
    with sqlite3.connect(run / "results.sqlite") as db:
        top = db.execute(
            "SELECT s.prompt_id, s.sample_idx FROM samples s JOIN scores c USING (gen_key, prompt_id, sample_idx) "
            "WHERE s.method = 'ppo-lag' AND s.suite = 'tiny-harmful' ORDER BY c.cost DESC LIMIT ?", (WORST_N,)).fetchall()
        turned = db.execute(
            "SELECT COUNT(DISTINCT m.prompt_id), COUNT(*) FROM samples m JOIN scores mc USING (gen_key, prompt_id, sample_idx) "
            "JOIN samples b ON b.prompt_id = m.prompt_id AND b.sample_idx = m.sample_idx AND b.suite = m.suite "
            "JOIN scores bc ON bc.gen_key = b.gen_key AND bc.prompt_id = b.prompt_id AND bc.sample_idx = b.sample_idx "
            "WHERE m.method = 'ppo-lag' AND b.method = 'sft' AND m.suite = 'tiny-harmful' "
            "AND mc.cost > 0 AND bc.cost <= 0").fetchone()
    row = worst[worst.index("<td>ppo-lag</td><td>tiny-harmful</td>"):]
    row = row[:row.index("</tr>")]
    assert re.findall(r">(h\d+)#(\d)</a>", row) == [(p, str(i)) for p, i in top]
    assert f"{turned[0]} of 30 prompts ({turned[1]} samples)" in row
    unsafe_link = {text: href for text, href in links(row).items()}[f"{turned[0]} of 30 prompts ({turned[1]} samples)"]
    assert fragment(unsafe_link) == {"suite": ["tiny-harmful"], "cols": ["sft", "ppo-lag"], "worse": ["ppo-lag"]}


def test_table_cells_link_to_their_samples_and_significant_differences_are_marked(runs, tmp_path):
    rows = runs.rows(seed=4, methods=("sft", "repo", "same"), n_prompts=40, k=1,
                     unsafe_share={"sft": 0.9, "repo": 0.05, "same": 0.9})
    same = [r for r in rows if r["method"] == "same"]
    for mine, base in zip(same, [r for r in rows if r["method"] == "sft"]):
        mine.update(cost=base["cost"], reward=base["reward"])  # 'same' answers exactly as SFT does
    html = write_reports([runs.make(tmp_path / "run", rows)], n_boot=200)["html"].read_text(encoding="utf-8")
    safety = html[html.index('id="table-safety"'):]
    safety = safety[:safety.index("</table>")]
    cells = re.findall(r"<tr>(.*?)</tr>", safety, re.S)[1:]
    by_key = {tuple(re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)[:2]): row
              for row in cells}
    repo = by_key[("repo", "tiny-harmful")]
    hrefs = [html_lib.unescape(h) for h in re.findall(r'href="([^"]*)"', repo)]
    # safety rate, prompts with >= 1 unsafe: the unsafe samples of repo on that suite
    assert fragment(hrefs[4]) == {"cols": ["repo"], "suite": ["tiny-harmful"], "unsafe": ["repo"]}
    assert fragment(hrefs[0]) == {"cols": ["repo"], "suite": ["tiny-harmful"]}
    assert "▼ sft" in repo and 'class="sig"' in repo  # far fewer unsafe prompts than SFT: McNemar p < 0.05
    assert "mark" not in by_key[("same", "tiny-harmful")]  # identical to SFT: nothing to mark
    paired = html[html.index('id="table-paired"'):]
    first = re.findall(r"<tr>(.*?)</tr>", paired[:paired.index("</table>")], re.S)[1]
    only_base = html_lib.unescape(re.findall(r'href="([^"]*)"', first)[4])  # "safe only in baseline"
    assert fragment(only_base) == {"suite": ["tiny-benign"], "cols": ["sft", "repo"], "safe": ["sft"],
                                   "unsafe": ["repo"]}


def test_comparison_shows_the_same_prompt_across_runs(runs, tmp_path):
    first = runs.make(tmp_path / "a" / "run", runs.rows(seed=1, n_prompts=10))
    second = runs.make(tmp_path / "b" / "run", runs.rows(seed=2, n_prompts=10, unsafe_share={"sft": 0.55, "repo": 0.95}))
    html = write_reports([first, second], tmp_path / "cmp", n_boot=100)["html"].read_text(encoding="utf-8")
    data = json.loads(blob(html))
    assert [c["label"] for c in data["columns"]] == ["run/sft", "run/repo", "run-2/sft", "run-2/repo"]
    assert [c["baseline"] for c in data["columns"]] == [None, 0, None, 2]
    assert len(data["prompts"]) == 20  # 10 harmful + 10 benign prompts, each once for both runs
    per_prompt = {}
    for p, c, *_ in data["samples"]:
        per_prompt.setdefault(p, set()).add(c)
    assert all(columns == {0, 1, 2, 3} for columns in per_prompt.values())
    across = [href for text, href in links(html).items()]
    assert any(fragment(h).get("cols") == ["run/repo", "run-2/repo"] for h in across)
    # The second run's repo is unsafe far more often than the first's, on the same prompts.
    safety = html[html.index('id="table-safety"'):]
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", safety[:safety.index("</table>")], re.S)
               if re.sub(r"<[^>]+>", "", r).startswith("run-2repotiny-harmful"))
    unsafe_share_cell = re.findall(r"<td[^>]*>(.*?)</td>", row)[6]
    assert "▲ run/repo" in unsafe_share_cell


def test_a_set_of_seeds_shows_each_seed_beside_its_own_sft(runs, tmp_path):
    out = runs.seed_set(tmp_path / "set", {s: runs.rows(seed=s, n_prompts=8, k=1) for s in (0, 1)})
    html = write_reports([out], n_boot=100)["html"].read_text(encoding="utf-8")
    data = json.loads(blob(html))
    labels = [c["label"] for c in data["columns"]]
    assert labels == ["sft (seed 0)", "repo (seed 0)", "sft (seed 1)", "repo (seed 1)"]
    assert [c["baseline"] for c in data["columns"]] == [None, 0, None, 2]
    for seed in (0, 1):
        with sqlite3.connect(out / f"seed-{seed}" / "results.sqlite") as db:
            expected = sorted((p, i, c) for p, i, c in db.execute(
                "SELECT s.prompt_id, s.sample_idx, c.cost FROM samples s JOIN scores c USING (gen_key, prompt_id, "
                "sample_idx) WHERE s.method = 'repo'"))
        column = labels.index(f"repo (seed {seed})")
        shown = sorted((data["prompts"][p][2], i, cost) for p, c, i, _, _, cost, *_ in data["samples"] if c == column)
        assert [(p, i) for p, i, _ in shown] == [(p, i) for p, i, _ in expected]
        assert [c for *_, c in shown] == pytest.approx([c for *_, c in expected], abs=1e-4)
    safety = html[html.index('id="table-safety"'):]
    repo = next(r for r in re.findall(r"<tr>(.*?)</tr>", safety[:safety.index("</table>")], re.S)
                if re.sub(r"<[^>]+>", "", r).startswith("repotiny-harmful"))
    hrefs = [html_lib.unescape(h) for h in re.findall(r'href="([^"]*)"', repo)]
    assert fragment(hrefs[4]) == {"cols": ["repo (seed 0)", "repo (seed 1)"], "suite": ["tiny-harmful"],
                                  "unsafe": ["any"]}
