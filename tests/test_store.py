"""Run store: atomic writes, stage records, rows written as produced."""

from __future__ import annotations

import os
import sqlite3

import pytest

from safebench import files as files_module
from safebench.hashing import stable_hash
from safebench.files import atomic_directory, atomic_write_json, atomic_write_text
from safebench.store import RunStore
from tests.helpers import copy_run


def test_atomic_write_keeps_the_old_file_when_the_write_dies(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    atomic_write_text(target, "old complete content")

    def crash(*_args, **_kwargs):
        raise OSError("disk vanished (injected fault)")

    monkeypatch.setattr(files_module.os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_text(target, "new content that never lands")
    assert target.read_text() == "old complete content"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temp file left behind


def test_atomic_directory_appears_only_when_complete(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "weights.bin").write_bytes(b"half")
            raise RuntimeError("killed mid-save")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(final) as tmp:
        (tmp / "weights.bin").write_bytes(b"whole")
    assert (final / "weights.bin").read_bytes() == b"whole"


def test_stage_is_done_only_after_its_record(tmp_path):
    store = RunStore(tmp_path)
    assert not store.stage_done("sft", "abc")
    store.mark_started("sft", "abc")
    (store.stage_dir("sft", "abc") / "model").mkdir(parents=True)
    assert not store.stage_done("sft", "abc")       # a directory alone is not a finished stage
    store.mark_done("sft", "abc", {"seconds": 1.5})
    assert store.stage_done("sft", "abc")
    assert store.stage_meta("sft", "abc")["seconds"] == 1.5
    status = sqlite3.connect(tmp_path / "results.sqlite").execute(
        "SELECT status FROM stages WHERE key='abc'").fetchone()[0]
    assert status == "done"


def _row(prompt_id: str, sample_idx: int = 0) -> dict:
    return {"gen_key": "g", "method": "sft", "suite": "s", "prompt_id": prompt_id, "sample_idx": sample_idx,
            "prompt": "p", "response": "r", "category": None, "kind": "harmful", "gen_config_hash": "h",
            "n_tokens": 3}


def test_sample_rows_are_visible_to_another_connection_as_soon_as_written(tmp_path):
    store = RunStore(tmp_path)
    store.insert_samples([_row("a"), _row("a", 1)])
    reader = sqlite3.connect(tmp_path / "results.sqlite")
    assert reader.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 2
    assert store.done_sample_keys("g") == {("a", 0), ("a", 1)}


def test_a_run_copy_holds_the_rows_still_in_the_wal_of_an_open_store(tmp_path):
    """The tests' copy of a run directory while a store (another test's) holds it open: the rows
    not yet checkpointed into results.sqlite are in the copy, and no side file comes along."""
    store = RunStore(tmp_path / "run")
    store.insert_samples([_row("a"), _row("b")])
    assert (tmp_path / "run" / "results.sqlite-wal").stat().st_size > 0
    copy = copy_run(tmp_path / "run", tmp_path / "copy")
    store.close()
    assert not list(copy.glob("*.sqlite-*"))
    reader = sqlite3.connect(copy / "results.sqlite")
    assert reader.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 2
    reader.close()


def test_a_failed_batch_leaves_no_partial_rows(tmp_path):
    store = RunStore(tmp_path)
    bad = _row("b")
    bad["prompt"] = None  # NOT NULL violation in the middle of the batch
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_samples([_row("a"), bad, _row("c")])
    assert store.done_sample_keys("g") == set()


def test_json_written_atomically_round_trips(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "m.json").read_text().startswith("{\n  \"a\"")


def test_stable_hash_ignores_key_order_but_not_values():
    assert stable_hash({"a": 1, "b": {"c": 2, "d": 3}}) == stable_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_results_on_a_dir_without_manifest_is_a_usage_error(tmp_path):
    from safebench.errors import UsageError

    with pytest.raises(UsageError, match="not a safebench run directory"):
        RunStore(tmp_path).results()
