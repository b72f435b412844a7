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

        return tiny.write_world(out_dir, seed, config.train_prompts, config.sft_responses_per_prompt,
                                config.preference_pairs_per_prompt)
    if config.source == "jsonl":
        if not config.preference_file:
            raise UsageError("data.preference_file: required when data.source is 'jsonl'")
        records = _read_records(Path(config.preference_file))
    else:
        records = _hub_records(config)
    if config.max_records:
        records = records[: config.max_records]
    sft = _read_sft(Path(config.sft_file)) if config.sft_file else _sft_from_preference(records)
    prompts = [{"id": f"train-{i}", "prompt": p, "category": None, "kind": None}
               for i, p in enumerate(dict.fromkeys(r["prompt"] for r in records))]
    write_jsonl(out_dir / "sft.jsonl", sft)
    write_jsonl(out_dir / "preference.jsonl", records)
    write_jsonl(out_dir / "prompts.jsonl", prompts)
    return {"sft": len(sft), "preference": len(records), "prompts": len(prompts)}


def load(data_dir: Path) -> WorldData:
    return WorldData(sft=read_jsonl(data_dir / "sft.jsonl"), preference=read_jsonl(data_dir / "preference.jsonl"),
                     prompts=read_jsonl(data_dir / "prompts.jsonl"))


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

    dataset = load_dataset(config.hub_dataset, revision=config.hub_revision, split="train")
    return [validate_record(dict(r), f"{config.hub_dataset} row {i}") for i, r in enumerate(dataset)]


def _sft_from_preference(records: list[dict]) -> list[dict]:
    """Without instruction data, SFT on the better response of each pair (documented choice)."""
    return [{"prompt": r["prompt"], "response": r[f"response_{r['better_response_id']}"]} for r in records]
