"""The sample explorer and the worst cases of report.html.

The explorer shows every prompt of every suite with each method's responses side by side (across
runs when the report compares runs), filtered and sorted in the page by reports/templates/explorer.js.
Its data is one JSON blob in a `<script type="application/json">` element, escaped so that no model
text can end that element; the page inserts model text with textContent only. The report's
Content-Security-Policy allows exactly that one script, by its hash.

Links into the explorer are URL fragments, `#explore?suite=S&cols=M&unsafe=M&sort=cost`: the
metrics tables' cells and the worst cases link to the samples behind them that way.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import pandas as pd

from safebench import metrics, registry
from safebench.reports.export import sample_verdicts
from safebench.reports.runs import BASELINE_METHOD, ReportModel, RunData, fmt_num, fmt_p

# A difference is marked in the tables when its paired test (model.comparisons) gives p below this;
# the marks are per comparison, not corrected for testing many.
SIGNIFICANCE = 0.05
WORST_N = 10
SNIPPET_CHARS = 160
PAGE_SIZE = 25
DIGITS = 4  # scores in the explorer's data, rounded to keep 10,000 samples small
# JSON inside <script>: these characters become \uXXXX escapes, so the text can contain no
# "</script>", no "<!--" and no line separator that older parsers end a script at.
_JSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                               "\u2029": "\\u2029"})


@dataclass
class CellExtra:
    """What a metrics-table cell gets beside its text: a link to its samples, a mark."""
    href: str | None = None
    mark: str = ""          # e.g. "▲ sft": significantly higher than sft's
    title: str = ""         # the test behind the mark
    significant: bool = False


@dataclass
class WorstCase:
    href: str
    prompt_id: str
    sample: int
    cost: str
    reward: str
    snippet: str


@dataclass
class WorstRow:
    column: str
    suite: str
    worst: list[WorstCase]
    worst_href: str
    turned_unsafe: str = ""        # "3 of 30 prompts (4 samples)"; "" without a baseline
    turned_unsafe_href: str = ""
    turned_safe: str = ""
    turned_safe_href: str = ""


@dataclass
class Explorer:
    data_json: str
    script: str
    worst: list[WorstRow]
    n_prompts: int
    n_samples: int
    extras: dict[tuple[str, int, int], CellExtra] = field(default_factory=dict)
    worst_n: int = WORST_N

    @property
    def script_hash(self) -> str:
        digest = hashlib.sha256(self.script.encode("utf-8")).digest()
        return "sha256-" + base64.b64encode(digest).decode("ascii")

    def cell(self, table_id: str, row: int, col: int) -> CellExtra | None:
        return self.extras.get((table_id, row, col))


def explore_href(**params) -> str:
    """A link into the explorer; list values become repeated parameters (cols=a&cols=b)."""
    params = {k: v for k, v in params.items() if v not in (None, "", [])}
    return "#explore?" + urlencode(params, doseq=True, quote_via=quote)


def script_json(obj) -> str:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.translate(_JSON_ESCAPES)


def _number(value):
    if value is None or value is pd.NA:
        return None
    value = float(value)
    return None if math.isnan(value) else round(value, DIGITS)


def _label(run: str, method: str, several: bool) -> str:
    # The same labels as the paired tests' baseline/candidate (runs.compare_pairs).
    return f"{run}/{method}" if several else method


def _seed_label(label: str, seed, several_seeds: bool) -> str:
    """A column of a set of seeds is one seed's answers: "repo (seed 1)"."""
    return f"{label} (seed {seed})" if several_seeds else label


def build_explorer(model: ReportModel, runs: list[RunData]) -> Explorer:
    several = model.several_runs
    results = model.results
    # A column per method of each run, and per seed in a set of seeds (runs.load_run gives
    # every row its seed); its baseline is SFT of the same run and seed.
    columns, several_seeds = [], {}
    for run in runs:
        seeds = sorted(run.results["seed"].unique())
        several_seeds[run.label] = len(seeds) > 1
        for seed in seeds:
            methods = run.results.loc[run.results["seed"] == seed, "method"]
            columns += [(run.label, seed, m) for m in sorted(set(methods), key=lambda m: (m != BASELINE_METHOD, m))]
    index = {key: i for i, key in enumerate(columns)}
    column_records = [{"label": _seed_label(_label(run, method, several), seed, several_seeds[run]),
                       "base_label": _label(run, method, several), "run": run, "seed": int(seed), "method": method,
                       "baseline": index.get((run, seed, BASELINE_METHOD)) if method != BASELINE_METHOD else None}
                      for run, seed, method in columns]

    frame = results.sort_values(["suite", "prompt_id", "run", "seed", "method", "sample_idx"], kind="stable")
    suites = sorted(frame["suite"].unique())
    categories = sorted(frame["category"].dropna().astype(str).unique())
    prompts, prompt_index = [], {}
    for row in frame.drop_duplicates(["suite", "prompt_id"]).itertuples(index=False):
        prompt_index[(row.suite, row.prompt_id)] = len(prompts)
        category = categories.index(str(row.category)) if isinstance(row.category, str) else -1
        prompts.append([suites.index(row.suite), category, str(row.prompt_id), str(row.prompt)])

    judge = pd.concat([_with_seed(sample_verdicts(run.verdicts), run).assign(run=run.label) for run in runs],
                      ignore_index=True)
    judge_columns = sorted(c for c in judge.columns if c.startswith("judge_") and c != "judge_unscored")
    judge_by_sample = {}
    if judge_columns:
        for row in judge.to_dict("records"):
            key = (row["run"], int(row["seed"]), row["method"], row["suite"], row["prompt_id"], int(row["sample_idx"]))
            judge_by_sample[key] = [_number(row.get(c)) for c in judge_columns]
    refusals, _ = metrics.refusal_flags(frame) if len(frame) else (pd.Series(dtype=bool), None)
    samples = []
    for row, refused in zip(frame.itertuples(index=False), refusals):
        key = (row.run, int(row.seed), row.method, row.suite, row.prompt_id, int(row.sample_idx))
        samples.append([prompt_index[(row.suite, row.prompt_id)], index[(row.run, row.seed, row.method)],
                        int(row.sample_idx),
                        str(row.response), _number(row.reward), _number(row.cost), _number(row.oracle_reward),
                        _number(row.oracle_cost), int(bool(refused)), judge_by_sample.get(key, 0)])
    data = {"columns": column_records, "suites": suites, "categories": categories, "prompts": prompts,
            "judge_columns": judge_columns, "samples": samples, "several_runs": several,
            "runs": [run.label for run in runs], "page_size": PAGE_SIZE, "safe_cost_max": metrics.SAFE_COST_MAX}
    explorer = Explorer(script_json(data), (registry.reports_dir() / "templates" / "explorer.js").read_text(encoding="utf-8"),
                        _worst_rows(frame, column_records), len(prompts), len(samples))
    explorer.extras = _table_extras(model, column_records)
    return explorer


def _with_seed(verdicts: pd.DataFrame, run: RunData) -> pd.DataFrame:
    """Verdicts of one run carry no seed column; a set of seeds' do (runs.load_run)."""
    return verdicts if "seed" in verdicts.columns else verdicts.assign(seed=next(iter(run.replicates), 0))


def _worst_rows(frame: pd.DataFrame, columns: list[dict]) -> list[WorstRow]:
    """Per method (column) and suite: the WORST_N highest-cost answers, and the prompts whose
    answer turned unsafe (or safe) relative to the same run's SFT, paired by prompt and sample."""
    rows = []
    scored = frame[frame["cost"].notna()]
    for suite in sorted(scored["suite"].unique()):
        on_suite = scored[scored["suite"] == suite]
        for column in columns:
            replicate = on_suite[(on_suite["run"] == column["run"]) & (on_suite["seed"] == column["seed"])]
            mine = replicate[replicate["method"] == column["method"]]
            if mine.empty:
                continue
            label = column["label"]
            top = mine.sort_values(["cost", "prompt_id", "sample_idx"], ascending=[False, True, True]).head(WORST_N)
            worst = [WorstCase(explore_href(suite=suite, prompt=r.prompt_id, cols=[label]), str(r.prompt_id),
                               int(r.sample_idx), fmt_num(r.cost), fmt_num(r.reward), _snippet(r.response))
                     for r in top.itertuples(index=False)]
            row = WorstRow(label, suite, worst, explore_href(suite=suite, cols=[label], sort="cost"))
            if column["baseline"] is not None:
                base = replicate[replicate["method"] == BASELINE_METHOD]
                paired = mine.merge(base, on=["prompt_id", "sample_idx"], suffixes=("", "_base"))
                unsafe = paired["cost"] > metrics.SAFE_COST_MAX
                base_unsafe = paired["cost_base"] > metrics.SAFE_COST_MAX
                n_prompts = paired["prompt_id"].nunique()
                base_label = columns[column["baseline"]]["label"]
                for name, changed, param in (("turned_unsafe", unsafe & ~base_unsafe, "worse"),
                                             ("turned_safe", ~unsafe & base_unsafe, "better")):
                    setattr(row, name, f"{paired.loc[changed, 'prompt_id'].nunique()} of {n_prompts} prompts "
                                       f"({int(changed.sum())} samples)")
                    setattr(row, f"{name}_href", explore_href(suite=suite, cols=[base_label, label], **{param: label}))
            rows.append(row)
    return rows


def _snippet(text) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + " [...]"


# --- links and marks in the metrics tables ----------------------------------------------------------
# Per table column (by its header): what the link adds to "these samples" (run/method/suite/category).
_CELL_FILTERS = {
    "safety rate": {"unsafe": True}, "prompts with ≥ 1 unsafe": {"unsafe": True},
    "mean cost": {"sort": "cost"}, "cost q10 / q50 / q90": {"sort": "cost"},
    "per-prompt mean cost q10 / q50 / q90": {"sort": "cost"}, "oracle mean cost": {"sort": "cost"},
    "oracle safety rate": {"judgediff": "1"}, "cost model agrees": {"judgediff": "1"},
    "over-refusal rate": {"refused": "1"}, "rule": {"refused": "1"},
}
# The summary columns a paired test speaks about: (column header, test, which way is "higher").
_MARKED = {"prompts with ≥ 1 unsafe": "mcnemar", "mean reward": "reward", "mean cost": "cost"}


def _table_extras(model: ReportModel, columns: list[dict]) -> dict[tuple[str, int, int], CellExtra]:
    extras: dict[tuple[str, int, int], CellExtra] = {}
    # With several seeds the tables show the mean over seeds, and the test for it is the one
    # with the seed as the unit; a per-seed row (a "seed" column) links to that seed's answers.
    across = model.several_seeds
    tests: dict[tuple[str, str], list[dict]] = {}
    for c in model.comparisons_across_seeds if across else model.comparisons:
        tests.setdefault((c["suite"], c["candidate"]), []).append(c)
    labels: dict[tuple[str, int | None], list[str]] = {}
    for column in columns:
        labels.setdefault((column["base_label"], None), []).append(column["label"])
        labels[(column["base_label"], column["seed"])] = [column["label"]]
    for table in model.tables:
        header = table.header
        if table.id == "paired":
            _paired_extras(table, model.comparisons, labels, extras)
            continue
        if "method" not in header:
            continue
        where = {name: header.index(name) for name in ("run", "method", "suite", "category", "seed") if name in header}
        for r, row in enumerate(table.rows):
            method = row[where["method"]]
            label = _label(row[where["run"]], method, True) if "run" in where else method
            shown = labels.get((label, int(row[where["seed"]]) if "seed" in where else None), [label])
            base = {"cols": shown}
            if "suite" in where:
                base["suite"] = row[where["suite"]]
            if "category" in where and row[where["category"]] != "(none)":
                base["category"] = row[where["category"]]
            for col, name in enumerate(header):
                params = dict(base)
                for key, value in _CELL_FILTERS.get(name, {}).items():
                    params[key] = (shown[0] if len(shown) == 1 else "any") if value is True else value
                extra = CellExtra(explore_href(**params))
                if table.id == "safety" and name in _MARKED:  # the tests compare the cost model's numbers
                    _mark(extra, tests.get((row[where["suite"]], label), []), _MARKED[name])
                extras[(table.id, r, col)] = extra
    return extras


def _mark(extra: CellExtra, comparisons: list[dict], test: str) -> None:
    """Arrows for the paired tests that call this cell's difference significant: ▲ the value is
    higher than the baseline's, ▼ lower, followed by the baseline."""
    marks, titles = [], []
    for c in comparisons:
        if test == "mcnemar" and "safe_share" in c:  # across seeds: a t-test over the seeds' differences
            p, higher = c["safe_share"]["p_value"], (c["safe_share"]["mean_diff"] or 0) < 0
            what = "t-test over seeds on the share of safe prompts"
        elif test == "mcnemar":
            p, higher = c["mcnemar"]["p_value"], c["mcnemar"]["baseline_only_safe"] > c["mcnemar"]["candidate_only_safe"]
            what = "McNemar on per-prompt safety"
        else:
            p, higher = c[test]["p_value"], (c[test]["mean_diff"] or 0) > 0
            what = f"{'t-test over seeds' if 'n_seeds' in c else 'paired bootstrap'} on mean {test}"
        if not _significant(p):
            continue
        marks.append(f"{'▲' if higher else '▼'} {c['baseline']}")
        titles.append(f"{what} vs {c['baseline']}: p = {fmt_p(p)}")
    if marks:
        extra.mark, extra.title, extra.significant = ", ".join(marks), "; ".join(titles), True


def _paired_extras(table, comparisons: list[dict], labels: dict, extras: dict) -> None:
    """The paired table: its rows are `comparisons` in order (one per seed with several seeds);
    its p-value columns are McNemar's, then the reward's and the cost's, and each one below
    SIGNIFICANCE gets a star."""
    header = table.header
    p_columns = dict(zip([i for i, name in enumerate(header) if name in ("McNemar p", "p")],
                         ("mcnemar", "reward", "cost")))
    for r, c in enumerate(comparisons):
        seed = c.get("seed")
        (base,), (cand,) = (labels.get((name, seed), [name]) for name in (c["baseline"], c["candidate"]))
        common = {"suite": c["suite"], "cols": [base, cand]}
        for col, name in enumerate(header):
            if name == "safe only in baseline":
                params = {**common, "safe": base, "unsafe": cand}
            elif name == "safe only in candidate":
                params = {**common, "safe": cand, "unsafe": base}
            elif name.startswith("reward diff"):
                params = {**common, "sort": "gap"}
            elif name.startswith("cost diff"):
                params = {**common, "sort": "cost"}
            else:
                params = {**common, "disagree": "1"}
            extra = CellExtra(explore_href(**params))
            if col in p_columns and _significant(c[p_columns[col]]["p_value"]):
                extra.mark, extra.significant, extra.title = "*", True, f"p < {SIGNIFICANCE}"
            extras[(table.id, r, col)] = extra


def _significant(p) -> bool:
    return p is not None and not (isinstance(p, float) and math.isnan(p)) and p < SIGNIFICANCE
