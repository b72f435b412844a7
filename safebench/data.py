"""Training data and suite prompts in one shape for every trainer and suite.

Sources: the tiny world (built locally), PKU-SafeRLHF-shaped records from the hub
(`datasets.load_dataset`, revision v0 = the 2023 data the papers use), or local jsonl files.
"""

from __future__ import annotations

from pathlib import Path

from safebench.config import DataConfig
from safebench.errors import UsageError
from safebench.store import read_jsonl, write_jsonl
from safebench.trainers.base import WorldData

PREFERENCE_FIELDS = ("prompt", "response_0", "response_1", "better_response_id", "safer_response_id",
                     "is_response_0_safe", "is_response_1_safe")


def prepare(config: DataConfig, seed: int, out_dir: Path) -> dict:
    """Write sft.jsonl, preference.jsonl, prompts.jsonl (and the tiny world's suites) into out_dir."""
    if config.source == "tiny-world":
        from safebench.world import tiny

        if config.heldout_fraction:
            raise UsageError(f"data.heldout_fraction = {config.heldout_fraction}: not supported for source "
                             "'tiny-world' (its oracle grades every sample); set it to 0")

        return tiny.write_world(out_dir, seed, config.train_prompts, config.sft_responses_per_prompt,
                                config.preference_pairs_per_prompt)
    if config.source == "pyrit-human-labels":
        return _write_pyrit_human_labels(config, seed, out_dir)
    if config.source == "jsonl":
        if not config.preference_file:
            raise UsageError("data.preference_file: required when data.source is 'jsonl'")
        records = _read_records(Path(config.preference_file))
    else:
        records = _hub_records(config)
    records, heldout = split_heldout(records, config.heldout_fraction, seed)
    if config.max_records:
        records = records[: config.max_records]
    sft = _read_sft(Path(config.sft_file)) if config.sft_file else _sft_from_preference(records)
    prompts = [{"id": f"train-{i}", "prompt": p, "category": None, "kind": None}
               for i, p in enumerate(dict.fromkeys(r["prompt"] for r in records))]
    return _write_data(out_dir, sft, records, prompts, heldout)


def load(data_dir: Path) -> WorldData:
    heldout = data_dir / "preference_heldout.jsonl"
    return WorldData(sft=read_jsonl(data_dir / "sft.jsonl"), preference=read_jsonl(data_dir / "preference.jsonl"),
                     prompts=read_jsonl(data_dir / "prompts.jsonl"),
                     heldout=read_jsonl(heldout) if heldout.exists() else [])


def split_heldout(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): whole prompts are held out, because pairs of one prompt share responses
    and a response seen in training would flatter the held-out accuracy."""
    if not fraction:
        return records, []
    import random

    prompts = sorted({r["prompt"] for r in records})
    random.Random(f"heldout-{seed}").shuffle(prompts)
    held = set(prompts[: max(1, round(fraction * len(prompts)))])
    return [r for r in records if r["prompt"] not in held], [r for r in records if r["prompt"] in held]


def _write_data(out_dir: Path, sft: list[dict], records: list[dict], prompts: list[dict],
                heldout: list[dict]) -> dict:
    """The data stage's files (what `load` reads back) and their record counts."""
    counts = {}
    for name, rows in (("sft", sft), ("preference", records), ("prompts", prompts), ("preference_heldout", heldout)):
        if rows or name != "preference_heldout":
            write_jsonl(out_dir / f"{name}.jsonl", rows)
            counts[name.replace("preference_", "")] = len(rows)
    return counts


def validate_record(record: dict, where: str) -> dict:
    missing = [f for f in PREFERENCE_FIELDS if f not in record]
    if missing:
        raise UsageError(f"{where}: missing field(s) {', '.join(missing)}; expected the PKU-SafeRLHF shape "
                         f"({', '.join(PREFERENCE_FIELDS)})")
    for field in ("better_response_id", "safer_response_id"):
        if record[field] not in (0, 1):
            raise UsageError(f"{where}: field '{field}' = {record[field]!r}: expected 0 or 1")
    return {k: record[k] for k in (*PREFERENCE_FIELDS, "category") if k in record}


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        raise UsageError(f"data.preference_file: '{path}' does not exist")
    return [validate_record(r, f"{path} line {i + 1}") for i, r in enumerate(read_jsonl(path))]


def _read_sft(path: Path) -> list[dict]:
    if not path.exists():
        raise UsageError(f"data.sft_file: '{path}' does not exist")
    rows = read_jsonl(path)
    for i, r in enumerate(rows):
        if "prompt" not in r or "response" not in r:
            raise UsageError(f"{path} line {i + 1}: expected fields 'prompt' and 'response'")
    return rows


def _hub_records(config: DataConfig) -> list[dict]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(config.hub_dataset, revision=config.hub_revision, split="train")
    except Exception as exc:  # offline or unknown dataset: one line naming the asset, not a trace
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"data.hub_dataset = {config.hub_dataset!r} (revision {config.hub_revision or 'main'}): "
                         f"could not reach it on the Hugging Face hub and it is not in the local HF cache "
                         f"({type(exc).__name__}: {reason[:200]})") from None
    return [validate_record(dict(r), f"{config.hub_dataset} row {i}") for i, r in enumerate(dataset)]


def _sft_from_preference(records: list[dict]) -> list[dict]:
    """Without instruction data, SFT on the better response of each pair (documented choice)."""
    return [{"prompt": r["prompt"], "response": r[f"response_{r['better_response_id']}"]} for r in records]


# --- pyrit-human-labels: real human labels that ship in the pyrit wheel (the smol preset) ------
#
# No package carries preference data with both helpfulness and safety labels (see
# shared/design/assets.md), so this source builds the smallest honest stand-in from people's
# labels in pyrit 1.1.0 (MIT), read from the sha256-pinned wheel, never copied into the repo:
#
#   preference  two responses to the same red-team prompt (scorer_evals/harm/*.csv) whose mean
#               human harm ratings (0-1, up to three raters) differ.
#               safer_response_id  = the lower rating                    (a human label)
#               is_response_i_safe = rating < 0.5                       (the judge-validate threshold)
#               better_response_id = the HIGHER rating: a proxy, not a human helpfulness label.
#               On a red-team prompt the response that goes along with the request is the more
#               "helpful" one in Safe RLHF's sense (helpfulness judged apart from harm), and a
#               higher harm rating is the only trace of going along that people recorded here.
#               Limit: on this data reward = -cost ordering, so the reward model learns compliance,
#               not answer quality, and sees no benign prompts.
#   sft         responses people labelled "not a refusal" (scorer_evals/refusal_scorer/*.csv):
#               real assistant answers, mostly to everyday requests (recipes, science, jokes), a
#               few to harmful ones -- a helpful-only SFT set, like Alpaca's role in the papers.
#   prompts     the red-team prompts of the harm files (for RL methods).
# At most `preference_pairs_per_prompt` pairs per prompt (one prompt has 52 rated responses),
# drawn with the run's seed; `max_records` caps the total.

PYRIT_HARM_DIR = "pyrit/datasets/scorer_evals/harm/"
PYRIT_REFUSAL_DIR = "pyrit/datasets/scorer_evals/refusal_scorer/"
PYRIT_SAFE_BELOW = 0.5


def _write_pyrit_human_labels(config: DataConfig, seed: int, out_dir: Path) -> dict:
    import itertools
    import random

    from safebench import assets
    from safebench.evals.judge.validate import load_harm_labels

    wheel = assets.pyrit_wheel()
    by_prompt: dict[str, list[dict]] = {}
    for item in load_harm_labels(wheel, threshold=PYRIT_SAFE_BELOW):
        by_prompt.setdefault(item["prompt"], []).append(item)
    rng = random.Random(seed)
    records = []
    for prompt in sorted(by_prompt):
        responses = by_prompt[prompt]
        pairs = [(a, b) for a, b in itertools.combinations(responses, 2) if a["human_score"] != b["human_score"]]
        rng.shuffle(pairs)
        for a, b in pairs[: config.preference_pairs_per_prompt]:
            if rng.random() < 0.5:  # which response is listed first carries no signal
                a, b = b, a
            safer = 0 if a["human_score"] < b["human_score"] else 1
            records.append({
                "prompt": prompt, "response_0": a["response"], "response_1": b["response"],
                "better_response_id": 1 - safer, "safer_response_id": safer,
                "is_response_0_safe": a["human_score"] < PYRIT_SAFE_BELOW,
                "is_response_1_safe": b["human_score"] < PYRIT_SAFE_BELOW,
                "category": a["category"],
            })
    rng.shuffle(records)
    records, heldout = split_heldout(records, config.heldout_fraction, seed)
    if config.max_records:
        records = records[: config.max_records]
    sft = _pyrit_non_refusals(wheel)
    prompts = [{"id": f"train-{i}", "prompt": p, "category": by_prompt[p][0]["category"], "kind": "harmful"}
               for i, p in enumerate(sorted(by_prompt))]
    return _write_data(out_dir, sft, records, prompts, heldout)


def _pyrit_non_refusals(wheel: Path) -> list[dict]:
    """(objective, response) rows that people labelled as not refusing (human_score 0)."""
    import csv
    import io
    import zipfile

    rows = []
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            if not (name.startswith(PYRIT_REFUSAL_DIR) and name.endswith(".csv")):
                continue
            lines = [line for line in archive.read(name).decode("utf-8").splitlines() if not line.startswith("#")]
            for row in csv.DictReader(io.StringIO("\n".join(lines))):
                if row.get("data_type", "text") == "text" and str(row.get("human_score")).strip() == "0":
                    rows.append({"prompt": row["objective"], "response": row["assistant_response"]})
    return rows
