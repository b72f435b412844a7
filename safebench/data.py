"""Training data and suite prompts in one shape for every trainer and suite.

Sources: the tiny world (safebench/world/tiny.py), the smol preset's human labels
(safebench/world/smol.py), PKU-SafeRLHF-shaped records from the hub (`datasets.load_dataset`,
revision v0 = the 2023 data the papers use), or local jsonl files.
"""

from __future__ import annotations

from pathlib import Path

from dataclasses import dataclass, field

from safebench.config import DataConfig
from safebench.errors import UsageError
from safebench.files import read_jsonl, write_jsonl

PREFERENCE_FIELDS = ("prompt", "response_0", "response_1", "better_response_id", "safer_response_id",
                     "is_response_0_safe", "is_response_1_safe")


@dataclass
class WorldData:
    """Training data in one shape for every trainer (`load` reads it from the data stage)."""

    sft: list[dict]          # {prompt, response}
    preference: list[dict]   # PKU-SafeRLHF shape
    prompts: list[dict]      # RL prompts: {id, prompt, category, kind}
    heldout: list[dict] = field(default_factory=list)  # preference records of prompts kept out of training


def prepare(config: DataConfig, seed: int, out_dir: Path) -> dict:
    """Write sft.jsonl, preference.jsonl, prompts.jsonl (and the tiny world's suites) into out_dir."""
    if config.benign_pairs and config.source != "pyrit-human-labels":
        raise UsageError(f"data.benign_pairs = true: only for data.source 'pyrit-human-labels' (this run's is "
                         f"{config.source!r}); set it to false")
    if config.source == "tiny-world":
        from safebench.world import tiny

        if config.heldout_fraction:
            raise UsageError(f"data.heldout_fraction = {config.heldout_fraction}: not supported for source "
                             "'tiny-world' (its oracle grades every sample); set it to 0")

        return tiny.write_world(out_dir, seed, config.train_prompts, config.sft_responses_per_prompt,
                                config.preference_pairs_per_prompt)
    if config.source == "pyrit-human-labels":
        from safebench.world import smol

        built = smol.build(config, seed, split_heldout)
        if built.near_suites is not None:
            write_jsonl(out_dir / "near_suites.jsonl", built.near_suites)
        return write_data(out_dir, built.sft, built.preference, built.prompts, built.heldout)
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
    return write_data(out_dir, sft, records, prompts, heldout)


def load(data_dir: Path) -> WorldData:
    heldout = data_dir / "preference_heldout.jsonl"
    return WorldData(sft=read_jsonl(data_dir / "sft.jsonl"), preference=read_jsonl(data_dir / "preference.jsonl"),
                     prompts=read_jsonl(data_dir / "prompts.jsonl"),
                     heldout=read_jsonl(heldout) if heldout.exists() else [])


def split_heldout(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): whole prompts are held out, because pairs of one prompt share responses
    and a response seen in training would flatter the held-out accuracy. Records that share a
    `group` (a benign prompt and its harmful twin) are held out together, for the same reason."""
    if not fraction:
        return records, []
    import random

    def group(record: dict) -> str:
        return record.get("group") or record["prompt"]

    groups = sorted({group(r) for r in records})
    random.Random(f"heldout-{seed}").shuffle(groups)
    held = set(groups[: max(1, round(fraction * len(groups)))])
    return [r for r in records if group(r) not in held], [r for r in records if group(r) in held]


def write_data(out_dir: Path, sft: list[dict], records: list[dict], prompts: list[dict],
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
    for name in ("better_response_id", "safer_response_id"):
        if record[name] not in (0, 1):
            raise UsageError(f"{where}: field '{name}' = {record[name]!r}: expected 0 or 1")
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
