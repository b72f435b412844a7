"""Suite source `hub`: a split of a Hugging Face hub dataset, pinned by revision, read with datasets'
`load_dataset` (from the local HF cache when offline, HF_HUB_OFFLINE=1). `dataset` may also be a
local folder in the hub's layout (data/SPLIT-*.parquet, .jsonl or .csv), which load_dataset reads
the same way: the offline stand-in of a hub dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from safebench.errors import UsageError
from safebench.evals.suites import FieldMap, records_to_items


class Source(FieldMap):
    type: Literal["hub"]
    dataset: str
    revision: str | None = None
    split: str = "test"
    unique_prompts: bool = True  # preference datasets repeat a prompt once per response pair


def read(suite, source: Source, data_dir: Path | None) -> list[dict]:
    try:
        from datasets import load_dataset
    except ImportError:
        raise UsageError(f"{suite.where}: hub dataset '{source.dataset}' needs the datasets package "
                         "(pip install datasets)") from None
    try:
        rows = load_dataset(source.dataset, revision=source.revision, split=source.split)
    except Exception as exc:  # noqa: BLE001 - offline, unknown dataset or split: one line naming it
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{suite.where}: could not reach hub dataset '{source.dataset}' (revision "
                         f"{source.revision or 'main'}, split {source.split}) and it is not in the local HF cache "
                         f"({type(exc).__name__}: {reason[:200]})") from None
    if source.prompt_field not in rows.column_names:
        raise UsageError(f"{suite.where}: field 'source.prompt_field' = {source.prompt_field!r}: not a column of "
                         f"{source.dataset} (columns: {', '.join(rows.column_names)})")
    records, seen = [], set()
    for index, row in enumerate(rows):
        if source.unique_prompts:
            if row[source.prompt_field] in seen:
                continue
            seen.add(row[source.prompt_field])
        # a dataset without ids: the row's place in the split, counted over every row
        records.append(row if source.id_field or "id" in row else {**row, "id": f"{source.split}-{index}"})
    return records_to_items(records, source, f"{suite.where} ({source.dataset})", source.split)
