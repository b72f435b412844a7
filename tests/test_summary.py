"""summary.md (the table `safebench run` prints) shows exactly metrics.summarize's numbers."""

from __future__ import annotations

import re

import pytest

from safebench import metrics, summary
from safebench.store import RunStore

CELL = re.compile(r"^(?P<value>-?\d+\.\d{3}) \[(?P<low>-?\d+\.\d{3}), (?P<high>-?\d+\.\d{3})\]$")


def printed_rows(text: str) -> tuple[list[str], list[list[str]]]:
    table = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table]
    return split[0], split[2:]   # header, then the rows after the |---| line


def test_printed_numbers_are_metrics_summarize(tiny_run):
    store = RunStore(tiny_run)
    try:
        expected = metrics.summarize(store.results())
    finally:
        store.close()
    header, rows = printed_rows((tiny_run / "summary.md").read_text())
    assert header[:3] == ["method", "suite", "samples"]
    assert {"safety_rate", "prompts_with_unsafe", "oracle_safety_rate"} <= set(header)
    assert sorted((r[0], r[1]) for r in rows) == sorted(zip(expected["method"], expected["suite"]))
    checked = 0
    for cells in rows:
        want = expected[(expected["method"] == cells[0]) & (expected["suite"] == cells[1])].iloc[0]
        assert int(cells[2]) == want["n_samples"]
        for name, cell in zip(header[3:], cells[3:]):
            metric = summary.COLUMNS[name]
            parsed = CELL.match(cell)
            assert parsed, f"{name}: {cell!r} is not 'value [low, high]'"
            for part, column in (("value", metric), ("low", f"{metric}_low"), ("high", f"{metric}_high")):
                assert float(parsed[part]) == pytest.approx(want[column], abs=5e-4), (cells[:2], name, part)
                checked += 1
    assert checked == len(rows) * (len(header) - 3) * 3 > 0


def test_notes_name_the_methods_that_are_one_checkpoint():
    manifest = {"config": {"methods": ["sft", "sacpo", "sacpo[beta_over_lambda=0.025]", "sacpo[lr=0.0001]",
                                       "p-sacpo[q=0.75]", "p-sacpo[q=0.5]"]},
                "methods": {"sft": {"key": "s"}, "sacpo": {"key": "a"},
                            "sacpo[beta_over_lambda=0.025]": {"key": "a", "trained_as": "sacpo"},
                            "sacpo[lr=0.0001]": {"key": "a", "trained_as": "sacpo"},
                            "p-sacpo[q=0.75]": {"key": "p", "trained_as": "p-sacpo"},
                            "p-sacpo[q=0.5]": {"key": "q"}}}
    assert summary.shared_checkpoint_notes(manifest) == [
        "sacpo[beta_over_lambda=0.025]: same settings as sacpo; trained once, so one checkpoint and one set of samples",
        "sacpo[lr=0.0001]: same settings as sacpo; trained once, so one checkpoint and one set of samples"]
    # neither is called by the name of the stage they share; only the methods asked about count
    assert summary.shared_checkpoint_notes(manifest, ["sacpo[beta_over_lambda=0.025]", "sacpo[lr=0.0001]"]) == [
        "sacpo[lr=0.0001]: same settings as sacpo[beta_over_lambda=0.025]; trained once (stage sacpo), "
        "so one checkpoint and one set of samples"]
    assert summary.shared_checkpoint_notes({"methods": {"sft": {"key": "s"}}}) == []
