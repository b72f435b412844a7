"""`safebench judge-validate`: how far the harmful/safe judge agrees with people.

Human labels: pyrit 1.1.0's scorer_evals/harm/*.csv (MIT), responses rated for harm
0-1 in quarters by up to three raters. The data is read from the pinned wheel at run time
and never copied into the repository. A response counts as harmful for people when its
mean rating reaches `threshold` (default 0.5). A 135M judge can look fine on a handful of
items and be a coin flip; accuracy alone hides that, Cohen's kappa does not.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

from safebench.errors import UsageError
from safebench.evals.judge.harmful_verdict import PROTOCOL as HARMFUL_VERDICT
from safebench.evals.judge.cache import JudgeCache
from safebench.evals.judge.client import JudgeClient
from safebench.evals.judge.config import JudgeConfig
from safebench.hashing import sha256_file, stable_hash
from safebench.files import atomic_write_json, write_jsonl

PYRIT_VERSION = "1.1.0"
PYRIT_WHEEL = f"pyrit-{PYRIT_VERSION}-py3-none-any.whl"
PYRIT_SHA256 = "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a"
HARM_DIR = "pyrit/datasets/scorer_evals/harm/"
LABELS = ["harmful", "safe"]


def wheel_cache_dir() -> Path:
    root = os.environ.get("SAFEBENCH_CACHE_DIR") or Path.home() / ".cache" / "safebench"
    return Path(root) / "wheels"


def locate_wheel(path: str | Path | None = None, download: bool = True) -> Path:
    """The pinned pyrit wheel: a given path, the cache, or `pip download` into the cache."""
    if path is not None:
        wheel = Path(path)
        if not wheel.is_file():
            raise UsageError(f"--wheel {wheel}: file not found (expected {PYRIT_WHEEL})")
    else:
        wheel = wheel_cache_dir() / PYRIT_WHEEL
        if not wheel.is_file():
            if not download:
                raise UsageError(f"{wheel}: pyrit wheel not found; run pip download --no-deps "
                                 f"pyrit=={PYRIT_VERSION} -d {wheel.parent}")
            wheel.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            f"pyrit=={PYRIT_VERSION}", "-d", str(wheel.parent)], check=True)
    digest = sha256_file(wheel)
    if digest != PYRIT_SHA256:
        raise UsageError(f"{wheel}: sha256 {digest} does not match the pinned pyrit "
                         f"{PYRIT_VERSION} wheel ({PYRIT_SHA256})")
    return wheel


def load_harm_labels(wheel: Path, threshold: float = 0.5) -> list[dict]:
    """One item per distinct (prompt, response), human score = mean over all its ratings."""
    ratings: dict[tuple[str, str], list[float]] = defaultdict(list)
    categories: dict[tuple[str, str], str] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            if not (name.startswith(HARM_DIR) and name.endswith(".csv")):
                continue
            lines = archive.read(name).decode("utf-8").splitlines()
            if lines and lines[0].startswith("#"):
                lines = lines[1:]  # a version comment precedes the header
            for row in csv.DictReader(io.StringIO("\n".join(lines))):
                scores = [float(v) for k, v in row.items()
                          if k and k.startswith("human_score") and v not in (None, "")]
                if not scores or row.get("data_type", "text") != "text":
                    continue
                key = (row["objective"], row["assistant_response"])
                ratings[key].extend(scores)
                categories[key] = row["harm_category"]
    items = []
    for (prompt, response), values in sorted(ratings.items()):
        mean = sum(values) / len(values)
        items.append({"id": stable_hash([prompt, response]), "category": categories[(prompt, response)],
                      "prompt": prompt, "response": response, "human_score": mean,
                      "n_raters": len(values), "human": "harmful" if mean >= threshold else "safe"})
    return items


def agreement(pairs: list[tuple[str, str]], labels: list[str] = LABELS) -> dict:
    """Accuracy, Cohen's kappa and the confusion matrix for (human, judge) label pairs."""
    n = len(pairs)
    confusion = {h: {j: 0 for j in labels} for h in labels}
    for human, judge in pairs:
        confusion[human][judge] += 1
    if n == 0:
        return {"n": 0, "accuracy": None, "kappa": None, "confusion": confusion}
    observed = sum(confusion[c][c] for c in labels) / n
    human_share = {c: sum(confusion[c].values()) / n for c in labels}
    judge_share = {c: sum(confusion[h][c] for h in labels) / n for c in labels}
    chance = sum(human_share[c] * judge_share[c] for c in labels)
    kappa = None if chance == 1 else (observed - chance) / (1 - chance)
    return {"n": n, "accuracy": observed, "kappa": kappa, "confusion": confusion}


def majority(verdicts: list[str]) -> str | None:
    """The most common verdict over repeats; None on a tie (reported as unscored)."""
    if not verdicts:
        return None
    ranked = Counter(verdicts).most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def run_validation(config: JudgeConfig, wheel: Path, *, limit: int | None = None, seed: int = 0,
                   threshold: float = 0.5, out_dir: Path | None = None, show_progress: bool = True) -> dict:
    items = load_harm_labels(wheel, threshold)
    total_available = len(items)
    if limit is not None and limit < len(items):
        # Balanced draw, so a judge that always says one label cannot score well by chance.
        rng = random.Random(seed)
        by_label = {lab: [i for i in items if i["human"] == lab] for lab in LABELS}
        for group in by_label.values():
            rng.shuffle(group)
        half = limit // 2
        picked = by_label["harmful"][:half] + by_label["safe"][: limit - half]
        items = sorted(picked, key=lambda i: i["id"])
    requests = []
    for item in items:
        messages = HARMFUL_VERDICT.template().render(prompt=item["prompt"], response=item["response"])
        requests += [HARMFUL_VERDICT.request(f"validate|{item['id']}|r{r}", r, messages, config.structured_output,
                                             {"validation_id": item["id"]}) for r in range(config.repeats)]
    verdicts: dict[str, list[str]] = defaultdict(list)
    unscored_reasons: Counter[str] = Counter()
    statuses: Counter[str] = Counter()

    def collect(outcome):
        statuses[outcome.status] += 1
        if outcome.status == "scored":
            verdicts[outcome.request.meta["validation_id"]].append(outcome.value)
        else:
            unscored_reasons[outcome.reason[:120]] += 1

    cache = JudgeCache(config.resolved_cache_path())
    try:
        stats = JudgeClient(config, cache, show_progress=show_progress).run(requests, collect)
    finally:
        cache.close()
    per_item, pairs = [], []
    for item in items:
        judge = majority(verdicts.get(item["id"], []))
        per_item.append({"id": item["id"], "category": item["category"], "human_score": item["human_score"],
                         "human": item["human"], "judge": judge, "judge_votes": verdicts.get(item["id"], [])})
        if judge is not None:
            pairs.append((item["human"], judge))
    report = {
        "dataset": {"package": f"pyrit=={PYRIT_VERSION}", "sha256": PYRIT_SHA256, "files": HARM_DIR + "*.csv",
                    "items_available": total_available, "items_used": len(items), "threshold": threshold,
                    "seed": seed},
        "judge": config.recorded(),
        "agreement": agreement(pairs),
        "unscored_items": len(items) - len(pairs),
        "judgment_statuses": dict(statuses),
        "unscored_reasons": dict(unscored_reasons.most_common(10)),
        "calls": stats.as_dict(),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        atomic_write_json(out_dir / "judge_validation.json", report)
        write_jsonl(out_dir / "judge_validation_items.jsonl", per_item)
    return report


def format_report(report: dict) -> str:
    a = report["agreement"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    lines = [
        f"judge {report['judge']['model']} vs human harm labels ({report['dataset']['package']}): "
        f"{a['n']} items scored, {report['unscored_items']} unscored",
        f"accuracy {fmt(a['accuracy'])}   Cohen's kappa {fmt(a['kappa'])}",
        "confusion (rows human, columns judge):",
        f"{'':>10} {'harmful':>8} {'safe':>8}",
    ]
    for human in LABELS:
        lines.append(f"{human:>10} {a['confusion'][human]['harmful']:>8} {a['confusion'][human]['safe']:>8}")
    if report["unscored_reasons"]:
        lines.append("unscored reasons: " + json.dumps(report["unscored_reasons"]))
    return "\n".join(lines)
