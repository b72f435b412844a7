"""The pipeline's judge stage: judge the generated samples, write verdicts as they arrive.

Tables (in the run's results.sqlite, owned here):
  judge_judgments  one row per judgment (protocol x sample x criterion x order x repeat),
                   status scored | unparsed | error | not_judged, with raw answer and reason;
  judge_metrics    per protocol/method/suite/criterion aggregates (win rate, Elo, rates);
  judge_summaries  the stage summary (counts, cost, what was not judged).
Resuming: a judgment already scored or unparsed for this stage key is never asked again;
errors and budget stops are retried on the next run.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from typing import Iterator

from safebench.hashing import stable_hash
from safebench.evals.judge.cache import JudgeCache
from safebench.evals.judge.client import JudgeClient, Outcome, RunStats
from safebench.evals.judge.config import TINY_ORACLE_ENDPOINT, JudgeConfig, parse_judge_config
from safebench.evals.judge.protocol import JudgeRequest, get_protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS judge_judgments (
    stage_key TEXT NOT NULL, item_id TEXT NOT NULL, protocol TEXT NOT NULL,
    gen_key TEXT NOT NULL, method TEXT NOT NULL, suite TEXT, prompt_id TEXT NOT NULL,
    sample_idx INTEGER NOT NULL, criterion TEXT, order_ab TEXT, repeat_idx INTEGER NOT NULL,
    baseline_gen_key TEXT, status TEXT NOT NULL, value TEXT, raw_answer TEXT, reason TEXT,
    judge_model TEXT NOT NULL, template_id TEXT, template_hash TEXT, cache_key TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL, from_cache INTEGER,
    attempts INTEGER, judged_at REAL,
    PRIMARY KEY (stage_key, item_id)
);
CREATE TABLE IF NOT EXISTS judge_metrics (
    stage_key TEXT NOT NULL, protocol TEXT NOT NULL, method TEXT NOT NULL, suite TEXT NOT NULL,
    criterion TEXT NOT NULL, name TEXT NOT NULL, value REAL,
    PRIMARY KEY (stage_key, protocol, method, suite, criterion, name)
);
CREATE TABLE IF NOT EXISTS judge_summaries (stage_key TEXT PRIMARY KEY, summary TEXT NOT NULL);
"""

FINAL_STATUSES = ("scored", "unparsed")
STATUSES = ("scored", "unparsed", "error", "not_judged")
INSERT = (
    "INSERT OR REPLACE INTO judge_judgments VALUES (:stage_key, :item_id, :protocol, :gen_key, "
    ":method, :suite, :prompt_id, :sample_idx, :criterion, :order_ab, :repeat_idx, "
    ":baseline_gen_key, :status, :value, :raw_answer, :reason, :judge_model, :template_id, "
    ":template_hash, :cache_key, :prompt_tokens, :completion_tokens, :cost_usd, :from_cache, "
    ":attempts, :judged_at)")


@contextlib.contextmanager
def reachable_judge(config: JudgeConfig) -> Iterator[JudgeConfig]:
    """The config to send requests with. For endpoint tiny-oracle the oracle judge's server
    runs (on a free loopback port) while the block does, and base_url points at it."""
    if config.endpoint != TINY_ORACLE_ENDPOINT:
        yield config
        return
    from safebench.evals.judge.tiny_oracle_judge import serving_tiny_oracle_judge

    with serving_tiny_oracle_judge() as server:
        yield config.model_copy(update={"base_url": server.base_url})


def ensure_tables(db) -> None:
    db.executescript(SCHEMA)


def build_requests(store, config: JudgeConfig, evaluations: list[dict]) -> tuple[list[JudgeRequest], list[str]]:
    """Every judgment the config asks for, and notes on anything that could not be asked about."""
    samples = {ev["gen_key"]: store.samples(ev["gen_key"]) for ev in evaluations}
    notes = [f"evaluation {ev['method']}/{ev['suite']} ({ev['gen_key']}) has no samples"
             for ev in evaluations if not samples[ev["gen_key"]]]
    requests: list[JudgeRequest] = []
    for name in config.protocols:
        asked, protocol_notes = get_protocol(name).requests(evaluations, samples, config)
        requests += asked
        notes += protocol_notes
    ids = [r.item_id for r in requests]
    assert len(ids) == len(set(ids)), "judge item ids must be unique within a stage"
    return requests, notes


def _row(stage_key: str, config: JudgeConfig, outcome: Outcome) -> dict:
    r, m = outcome.request, outcome.request.meta
    return {
        "stage_key": stage_key, "item_id": r.item_id, "protocol": r.protocol,
        "gen_key": m["gen_key"], "method": m["method"], "suite": m.get("suite"),
        "prompt_id": m["prompt_id"], "sample_idx": m["sample_idx"], "criterion": m.get("criterion"),
        "order_ab": m.get("order"), "repeat_idx": r.repeat_idx,
        "baseline_gen_key": m.get("baseline_gen_key"), "status": outcome.status,
        "value": json.dumps(outcome.value) if outcome.status == "scored" else None,
        "raw_answer": outcome.raw_answer, "reason": outcome.reason, "judge_model": config.model,
        "template_id": r.template_id, "template_hash": r.template_hash, "cache_key": outcome.cache_key,
        "prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
        "cost_usd": outcome.cost_usd, "from_cache": int(outcome.from_cache),
        "attempts": outcome.attempts, "judged_at": time.time(),
    }


def load_judgments(db, stage_key: str) -> list[dict]:
    cursor = db.execute("SELECT * FROM judge_judgments WHERE stage_key=? ORDER BY item_id", (stage_key,))
    names = [d[0] for d in cursor.description]
    rows = []
    for values in cursor.fetchall():
        row = dict(zip(names, values))
        row["value"] = json.loads(row["value"]) if row["value"] is not None else None
        row["order"] = row["order_ab"]
        rows.append(row)
    return rows


def summarize(db, stage_key: str, config: JudgeConfig) -> list[dict]:
    by_protocol: dict[str, list[dict]] = defaultdict(list)
    for row in load_judgments(db, stage_key):
        by_protocol[row["protocol"]].append(row)
    return [entry for name, rows in by_protocol.items() for entry in get_protocol(name).summarize(rows, config)]


def shared_samples(evaluations: list[dict]) -> tuple[list[dict], dict[str, list[str]], list[str]]:
    """The evaluations to ask the judge about, one per sample set (gen_key); for each sample set the
    other methods it belongs to; notes saying so. Methods with equal settings are trained once
    (config.share_stages) and so have the same samples: each judgment is asked once and recorded
    for every one of them."""
    first: dict[str, dict] = {}
    sharing: dict[str, list[str]] = {}
    notes: list[str] = []
    for ev in evaluations:
        if ev["gen_key"] not in first:
            first[ev["gen_key"]], sharing[ev["gen_key"]] = ev, []
            continue
        sharing[ev["gen_key"]].append(ev["method"])
        notes.append(f"{ev['method']}/{ev['suite']}: the samples of {first[ev['gen_key']]['method']} "
                     f"(same checkpoint), judged once and recorded for both")
    return list(first.values()), sharing, notes


def run_judge_stage(store, judge_config: dict, evaluations: list[dict], stage_key: str,
                    *, show_progress: bool = True) -> dict:
    """Judge the samples of `evaluations` (manifest entries: method, suite, gen_key, ...).

    Verdicts are written to judge_judgments as they arrive; a rerun with the same stage key
    asks only for what is missing. Returns the summary (also stored in judge_summaries).
    `summary["complete"]` is False when errors or the budget left judgments undone.
    """
    config = parse_judge_config(judge_config)
    ensure_tables(store.db)
    asked, sharing, shared_notes = shared_samples(evaluations)
    requests, notes = build_requests(store, config, asked)
    stats = ask_missing(store, config, stage_key, requests, sharing, show_progress)
    metrics = summarize(store.db, stage_key, config)
    write_metrics(store, stage_key, metrics)
    expected = sum(len(_item_ids(r, sharing)) for r in requests)
    summary = {"stage_key": stage_key,
               "judge": config.recorded(),  # the config holds the env var's name, never the key
               **stage_counts(store.db, stage_key, expected),
               "this_run": stats.as_dict(), "notes": notes + shared_notes, "metrics": metrics}
    store.db.execute("INSERT OR REPLACE INTO judge_summaries VALUES (?, ?)",
                     (stage_key, json.dumps(summary, default=str)))
    return summary


def _item_ids(request: JudgeRequest, sharing: dict[str, list[str]]) -> list[str]:
    """The judgment's item id, and its copies for the methods sharing the samples."""
    return [request.item_id, *(f"{request.item_id}|{m}" for m in sharing[request.meta["gen_key"]])]


def ask_missing(store, config: JudgeConfig, stage_key: str, requests: list[JudgeRequest],
                sharing: dict[str, list[str]], show_progress: bool) -> RunStats:
    """Ask the judge for every request not yet final (scored or unparsed) in this stage, and
    record each answer as it arrives."""
    db = store.db
    finished = {item for (item,) in db.execute(
        "SELECT item_id FROM judge_judgments WHERE stage_key=? AND status IN (?,?)", (stage_key, *FINAL_STATUSES))}
    todo = [r for r in requests if not finished.issuperset(_item_ids(r, sharing))]

    # Each verdict is committed on arrival, with its copies for the methods sharing the samples in
    # the same transaction (WAL): a SIGKILL loses at most the calls in flight, and those are still
    # in the cache if their answers had arrived.
    def record(outcome: Outcome) -> None:
        row = _row(stage_key, config, outcome)
        copies = [{**row, "item_id": f"{row['item_id']}|{m}", "method": m} for m in sharing[row["gen_key"]]]
        with store.transaction():
            db.executemany(INSERT, [row, *copies])

    cache = JudgeCache(config.resolved_cache_path())
    try:
        # Nothing to ask (a finished stage being re-summarised): no server to start either.
        with reachable_judge(config) if todo else contextlib.nullcontext(config) as live_config:
            return JudgeClient(live_config, cache, show_progress=show_progress).run(todo, record)
    finally:
        cache.close()


def write_metrics(store, stage_key: str, metrics: list[dict]) -> None:
    """The numeric fields of the protocols' summaries, as judge_metrics rows (replacing the stage's)."""
    labels = ("protocol", "method", "suite", "criterion")
    with store.transaction():
        store.db.execute("DELETE FROM judge_metrics WHERE stage_key=?", (stage_key,))
        store.db.executemany("INSERT INTO judge_metrics VALUES (?,?,?,?,?,?,?)", [
            (stage_key, *(entry[label] for label in labels), name, float(value))
            for entry in metrics for name, value in entry.items()
            if name not in labels and isinstance(value, (int, float))])


def stage_counts(db, stage_key: str, expected: int) -> dict:
    """The stage's judgments by status, whether all `expected` are final, what is not, why
    answers went unscored, and the cost so far."""
    counts = dict(db.execute("SELECT status, COUNT(*) FROM judge_judgments WHERE stage_key=? "
                             "GROUP BY status", (stage_key,)).fetchall())
    undone = [item for (item,) in db.execute(
        "SELECT item_id FROM judge_judgments WHERE stage_key=? AND status NOT IN (?,?) ORDER BY item_id",
        (stage_key, *FINAL_STATUSES))]
    unparsed_reasons = dict(db.execute(
        "SELECT reason, COUNT(*) FROM judge_judgments WHERE stage_key=? AND status='unparsed' "
        "GROUP BY reason ORDER BY COUNT(*) DESC LIMIT 10", (stage_key,)).fetchall())
    total_cost = db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM judge_judgments WHERE stage_key=?",
                            (stage_key,)).fetchone()[0]
    return {
        "expected": expected,
        "counts": {s: counts.get(s, 0) for s in STATUSES},
        "complete": not undone and sum(counts.get(s, 0) for s in FINAL_STATUSES) == expected,
        "not_judged": undone,
        "unparsed_reasons": unparsed_reasons,
        "cost_usd_total": total_cost,
    }


def judge_stage_key(judge_config: dict, evaluations: list[dict]) -> str:
    """A key that changes when anything that changes the verdicts changes (not concurrency,
    retries or budget: raising the budget must resume the same stage)."""
    config = parse_judge_config(judge_config)
    return stable_hash({
        "judge": config.identity(), "protocols": sorted(config.protocols), "repeats": config.repeats,
        "criteria": config.pairwise_criteria,
        "templates": {p: get_protocol(p).template().text_hash for p in config.protocols},
        "evaluations": sorted((ev["method"], ev["suite"], ev["gen_key"]) for ev in evaluations),
    })
