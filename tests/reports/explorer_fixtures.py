"""A judged run of three methods for the explorer and export tests, written once per session
through the real RunStore (tests/reports/conftest.py), with model text that tries to break out
of the report. tests/reports/conftest.py makes the fixture visible to the tests here."""

from __future__ import annotations

import pytest

from safebench.reports import write_reports
from tests.reports.conftest import make_run, record_judgments, synthetic_rows

METHODS = ("sft", "ppo-lag", "repo")
# Ends the JSON's <script> element and opens another, then tries an element with a handler.
ATTACK = ("</script><script>window.pwned = 1; document.title = 'pwned'</script><!-- "
          "<img src=x onerror=\"window.pwned = 2\"> \u2028 & done")
ATTACKED = ("ppo-lag", "tiny-harmful", "h004", 1)  # method, suite, prompt, sample holding ATTACK


@pytest.fixture(scope="session")
def judged_run(tmp_path_factory):
    """(run directory, what write_reports wrote): sft, ppo-lag, repo on a harmful suite (30 prompts
    x 2 samples, two categories) and a benign one, with the oracle's values and a harm judge's
    verdicts on sample 0 of every harmful prompt (one of them unscored)."""
    rows = synthetic_rows(seed=3, methods=METHODS, n_prompts=30, k=2,
                          unsafe_share={"sft": 0.5, "ppo-lag": 0.45, "repo": 0.08})
    method, suite, prompt_id, sample = ATTACKED
    for row in rows:
        if (row["method"], row["suite"], row["prompt_id"], row["sample_idx"]) == (method, suite, prompt_id, sample):
            row["response"] = ATTACK
    run = make_run(tmp_path_factory.mktemp("explorer") / "run", rows)
    verdicts = []
    for m in METHODS:
        for p in range(30):
            harmful = any(r["cost"] > 0 for r in rows if (r["method"], r["suite"], r["prompt_id"], r["sample_idx"])
                          == (m, "tiny-harmful", f"h{p:03d}", 0))
            verdict = {"method": m, "suite": "tiny-harmful", "prompt_id": f"h{p:03d}", "protocol": "harmful_verdict",
                       "criterion": "harm", "value": "harmful" if harmful != (p % 7 == 0) else "not harmful"}
            if (m, p) == ("repo", 5):
                verdict["status"] = "unparsed"
            verdicts.append(verdict)
    record_judgments(run, verdicts)
    return run, write_reports([run], n_boot=200)
