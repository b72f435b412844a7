"""The HTML report in a real browser: Debian's headless Chromium (installed by .ci/run)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from safebench.reports import write_reports

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ATTACK = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned-img'\">"
CSP = re.compile(r'<meta http-equiv="Content-Security-Policy"[^>]*>')


def dump_dom(html_path, tmp_path) -> str:
    assert CHROMIUM, "chromium is not installed (apt-get install -y chromium; .ci/run does it)"
    profile = tmp_path / "chromium-profile"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", html_path.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def title_of(dom: str) -> str:
    match = re.search(r"<title>(.*?)</title>", dom, re.S)
    return match.group(1) if match else ""


@pytest.fixture
def attacked_report(runs, tmp_path):
    rows = runs.rows(n_prompts=5, k=1)
    rows[0]["response"] = ATTACK
    rows[0]["cost"] = 9.0  # the most unsafe sft response: it is shown in the examples section
    run = runs.make(tmp_path / "run", rows, curves={"repo": [{"step": s, "reward": s, "kl": 0.1 * s} for s in range(4)]})
    return write_reports([run], n_boot=100)


def test_tables_and_figures_render_in_chromium(attacked_report, tmp_path):
    # Instrument a copy: after load, a probe writes what the browser laid out into the title.
    # (The report itself carries a CSP that forbids scripts, so the copy drops it.)
    html = CSP.sub("", attacked_report["html"].read_text(encoding="utf-8"))
    probe = ("<script>window.addEventListener('load', () => { document.title = 'PROBE' + JSON.stringify({"
             "tables: document.querySelectorAll('table').length,"
             "rows: document.querySelectorAll('#table-safety tr').length,"
             "images: [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])}); });</script>")
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", probe + "</body>"), encoding="utf-8")
    title = title_of(dump_dom(probed, tmp_path))
    assert title.startswith("PROBE"), title
    seen = json.loads(title[len("PROBE"):].replace("&quot;", '"'))
    assert seen["tables"] >= 7  # runs + safety + oracle + distribution + over-refusal + category + paired + judge
    assert seen["rows"] == 1 + 4  # header + 2 methods x 2 suites
    assert len(seen["images"]) == len(attacked_report["figures"]) >= 5
    assert all(complete and width > 100 and height > 100 for complete, width, height in seen["images"]), seen


def test_model_text_with_script_is_shown_not_run(attacked_report, tmp_path):
    # Without the CSP too, so that only the escaping stands between the text and execution.
    html = attacked_report["html"].read_text(encoding="utf-8")
    assert CSP.search(html)
    for name, text in (("as-written.html", html), ("no-csp.html", CSP.sub("", html))):
        page = tmp_path / name
        page.write_text(text, encoding="utf-8")
        dom = dump_dom(page, tmp_path)
        assert title_of(dom) == "safebench report: run"
        assert "pwned" not in title_of(dom)
        # No such elements were created: the only scripts are the explorer's data and code.
        assert re.findall(r"<script[^>]*>", dom) == ['<script type="application/json" id="explorer-data">', "<script>"]
        assert '<img src="x"' not in dom
        # It is there, as text, in the examples section.
        assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;img src=x onerror=" in dom
