"""Suite source `file` (and `jsonl`, the same reader): a local jsonl, csv or parquet file of records,
the format taken from the file's suffix unless `format` says. A relative `path` is relative to the
suite's own YAML file (a package suite's: the repository root)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

from safebench.errors import UsageError
from safebench.evals.suites import FILE_SUFFIXES, FieldMap, records_to_items
from safebench.files import read_jsonl


class Source(FieldMap):
    type: Literal["file", "jsonl"]
    path: str
    format: Literal["jsonl", "csv", "parquet"] | None = None


def read(suite, source: Source, data_dir: Path | None) -> list[dict]:
    path = suite.base_dir / source.path
    if not path.is_file():
        raise UsageError(f"{suite.where}: field 'source.path' = {source.path!r}: file not found")
    form = source.format or ("jsonl" if source.type == "jsonl" else FILE_SUFFIXES.get(path.suffix))
    if form is None:
        raise UsageError(f"{suite.where}: field 'source.path' = {source.path!r}: set source.format "
                         "(jsonl, csv or parquet); the suffix does not say")
    records = _parquet(path) if form == "parquet" else _text_records(path, form)
    return records_to_items(records, source, str(path), path.stem)


def _text_records(path: Path, form: str) -> list[dict]:
    if form == "jsonl":
        return read_jsonl(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
                         "save the file as UTF-8") from None
    rows = list(csv.DictReader(text.splitlines()))
    for number, row in enumerate(rows, 2):
        if None in row:  # more cells than the header names
            raise UsageError(f"{path}: line {number}: {len(row) - 1 + len(row[None])} cells, the header has "
                             f"{len(row) - 1}")
    return rows


def _parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"{path}: not a readable parquet file ({first})") from None
