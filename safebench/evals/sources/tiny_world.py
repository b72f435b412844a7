"""Suite source `tiny-world`: the held-out prompts of the tiny world (source.kind: harmful | benign |
over-refusal), from the run's data stage."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from safebench.errors import UsageError
from safebench.files import read_jsonl


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["tiny-world"]
    kind: Literal["harmful", "benign", "over-refusal"]


def read(suite, source: Source, data_dir: Path | None) -> list[dict]:
    path = data_dir / f"suite-{source.kind}.jsonl" if data_dir is not None else None
    if path is None or not path.exists():
        raise UsageError(f"suite '{suite.name}' needs the tiny world's data (data.source: tiny-world)")
    return read_jsonl(path)
