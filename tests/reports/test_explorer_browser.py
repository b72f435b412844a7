"""The sample explorer in a real headless Chromium (driven over the DevTools protocol): its filters
show the rows that results.sqlite says they should, table cells open their samples, and model text
that tries to run stays text. A screenshot of the filtered explorer is left in the test's tmp dir."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from tests.reports.cdp import Chromium
from tests.reports.explorer_fixtures import ATTACK, ATTACKED

CSP = re.compile(r'<meta http-equiv="Content-Security-Policy"[^>]*>')
# Every row the filters let through, page by page (the explorer shows 25 prompts a page).
ALL_ROWS = """(() => {
  const rows = [], next = document.querySelector('#explorer .next');
  for (;;) {
    rows.push(...[...document.querySelectorAll('#explorer tbody tr')].map((r) => r.dataset.prompt));
    if (next.disabled) break;
    next.click();
  }
  return {rows, count: document.querySelector('#explorer .count').textContent, hash: location.hash,
          header: [...document.querySelectorAll('#explorer thead th')].map((th) => th.textContent)};
})()"""
SET_FILTERS = """(() => {{
  for (const [key, value] of Object.entries({filters})) {{
    const node = document.querySelector(`#explorer [data-key="${{key}}"]`);
    if (node.type === 'checkbox') node.checked = Boolean(value); else node.value = value;
    node.dispatchEvent(new Event('change', {{bubbles: true}}));
  }}
}})()"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with Chromium(tmp_path_factory.mktemp("chromium") / "profile", width=1280, height=1000) as chromium:
        yield chromium


def prompts_where(run, sql: str, *params) -> list[str]:
    """suite:prompt_id of the prompts a query over per-(method, prompt) flags selects, in the
    explorer's default order (suite, prompt id)."""
    with sqlite3.connect(run / "results.sqlite") as db:
        db.execute("CREATE TEMP VIEW sample AS SELECT s.method, s.suite, s.prompt_id, s.sample_idx, c.cost, "
                   "c.oracle_reward, c.oracle_cost FROM samples s JOIN scores c USING (gen_key, prompt_id, sample_idx)")
        db.execute("CREATE TEMP VIEW cell AS SELECT method, suite, prompt_id, MAX(cost > 0) AS any_unsafe, "
                   "COUNT(cost) AS scored FROM sample GROUP BY method, suite, prompt_id")
        return [f"{suite}:{prompt}" for suite, prompt in db.execute(sql, params)]


def test_filters_show_the_rows_the_database_says(judged_run, browser, tmp_path):
    run, written = judged_run
    browser.open(written["html"].as_uri())  # as written: the CSP allows the explorer's own script only
    assert browser.evaluate("document.getElementById('explorer').dataset.ready") == "1"
    browser.evaluate(SET_FILTERS.format(filters=json.dumps({"suite": "tiny-harmful", "unsafe": "ppo-lag",
                                                            "safe": "repo"})))
    seen = browser.evaluate(ALL_ROWS)
    expected = prompts_where(run, "SELECT u.suite, u.prompt_id FROM cell u JOIN cell s USING (suite, prompt_id) "
                                  "WHERE u.method = ? AND u.any_unsafe AND s.method = ? AND NOT s.any_unsafe "
                                  "AND s.scored > 0 AND u.suite = ? ORDER BY u.suite, u.prompt_id",
                             "ppo-lag", "repo", "tiny-harmful")
    assert len(expected) >= 5
    assert seen["rows"] == expected
    assert seen["count"].startswith(f"{len(expected)} prompts match")
    assert seen["header"] == ["prompt", "sft", "ppo-lag", "repo"]
    assert "unsafe=ppo-lag" in seen["hash"] and "safe=repo" in seen["hash"]  # the view is a link
    browser.evaluate(SET_FILTERS.format(filters=json.dumps({"sort": "cost"})))
    browser.screenshot(tmp_path / "explorer.png", "#explorer")
    assert (tmp_path / "explorer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_table_cell_opens_its_samples(judged_run, browser):
    run, written = judged_run
    browser.open(written["html"].as_uri())
    # The "safety rate" cell of repo on the harmful suite: repo's unsafe prompts there.
    seen = browser.evaluate("""new Promise((resolve) => {
      const row = [...document.querySelectorAll('#table-safety tr')].find((tr) =>
        [...tr.cells].slice(0, 2).map((td) => td.textContent).join('|') === 'repo|tiny-harmful');
      addEventListener('hashchange', () => setTimeout(() => resolve(ROWS), 0), {once: true});
      row.cells[4].querySelector('a').click();
    })""".replace("ROWS", ALL_ROWS))
    expected = prompts_where(run, "SELECT suite, prompt_id FROM cell WHERE method = 'repo' AND any_unsafe "
                                  "AND suite = 'tiny-harmful' ORDER BY suite, prompt_id")
    assert seen["rows"] == expected and len(expected) >= 2
    assert seen["header"] == ["prompt", "repo"]


@pytest.mark.parametrize("view, sql", [
    ("suite=tiny-harmful&cols=sft&cols=ppo-lag&worse=ppo-lag",  # turned unsafe vs SFT, paired by sample
     "SELECT DISTINCT m.suite, m.prompt_id FROM sample m JOIN sample b USING (suite, prompt_id, sample_idx) "
     "WHERE m.method = 'ppo-lag' AND b.method = 'sft' AND m.cost > 0 AND b.cost <= 0 AND m.suite = 'tiny-harmful' "
     "ORDER BY 1, 2"),
    ("suite=tiny-benign&refused=1",  # the tiny world's rule: the oracle rates it safe and unhelpful
     "SELECT DISTINCT suite, prompt_id FROM sample WHERE suite = 'tiny-benign' AND oracle_reward <= 0 "
     "AND oracle_cost <= 0 ORDER BY 1, 2"),
    ("cols=sft&cols=repo&disagree=1",
     "SELECT a.suite, a.prompt_id FROM cell a JOIN cell b USING (suite, prompt_id) WHERE a.method = 'sft' "
     "AND b.method = 'repo' AND a.any_unsafe != b.any_unsafe ORDER BY 1, 2"),
    ("judgediff=1",  # the harm judge against the cost model (the oracle agrees with it in this run)
     "SELECT DISTINCT s.suite, s.prompt_id FROM sample s JOIN judge_judgments j USING (method, suite, prompt_id, "
     "sample_idx) WHERE j.status = 'scored' AND (j.value = '\"harmful\"') != (s.cost > 0) ORDER BY 1, 2"),
], ids=["worse", "refused", "disagree", "judgediff"])
def test_each_filter_keeps_what_the_database_says(judged_run, browser, view, sql):
    run, written = judged_run
    browser.open(written["html"].as_uri() + "#explore?" + view)
    expected = prompts_where(run, sql)
    assert len(expected) >= 2
    assert browser.evaluate(ALL_ROWS)["rows"] == expected


@pytest.mark.parametrize("csp", [True, False], ids=["as-written", "without-csp"])
def test_model_text_is_shown_as_text(judged_run, browser, tmp_path, csp):
    run, written = judged_run
    page = written["html"]
    if not csp:  # only the escaping stands between the text and execution
        page = tmp_path / "no-csp.html"
        page.write_text(CSP.sub("", written["html"].read_text(encoding="utf-8")), encoding="utf-8")
    method, suite, prompt_id, sample = ATTACKED
    browser.open(page.as_uri() + f"#explore?suite={suite}&prompt={prompt_id}&cols={method}")
    seen = browser.evaluate("""({
      pwned: window.pwned === undefined ? null : window.pwned, title: document.title,
      scripts: document.scripts.length, images: [...document.images].filter((i) => !i.src.startsWith('data:')).length,
      comments: document.createNodeIterator(document.body, NodeFilter.SHOW_COMMENT).nextNode() !== null,
      responses: [...document.querySelectorAll('#explorer tbody .response')].map((pre) => pre.textContent)})""")
    assert seen["pwned"] is None and seen["title"] == "safebench report: run"
    assert seen["scripts"] == 2 and seen["images"] == 0 and not seen["comments"]
    assert ATTACK in seen["responses"]
