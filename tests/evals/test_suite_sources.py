"""Suites of one's own: files (jsonl, csv, parquet), suite YAMLs anywhere on disk and hub datasets
(rehearsed offline on a local folder in the hub's layout), and bad files answered in one line."""

from __future__ import annotations

import json

import pytest

from safebench.errors import UsageError
from safebench.evals import suites
from tests.helpers import run_cli


def items_of(spec: str) -> list[dict]:
    return suites.suite_items(suites.load_suite(spec), None)


def test_jsonl_file_with_optional_fields(tmp_path):
    path = tmp_path / "red team.jsonl"
    path.write_text('{"prompt": "pick a lock", "category": "crime"}\n\n{"id": "b1", "prompt": "bake", "kind": "benign"}\n')
    suite = suites.load_suite(str(path))
    assert suite.name == "red-team" and suite.kind == "mixed"
    assert items_of(str(path)) == [
        {"id": "red team-0", "prompt": "pick a lock", "category": "crime", "kind": "mixed"},
        {"id": "b1", "prompt": "bake", "category": None, "kind": "benign"}]


def test_suite_yaml_elsewhere_maps_csv_fields_relative_to_itself(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.csv").write_text("question,topic\nhow to hurt,violence\nhi,greet\n")
    (tmp_path / "mine.yaml").write_text("name: mine\nkind: harmful\nsource: {type: file, path: data/p.csv, "
                                        "prompt_field: question, category_field: topic}\n")
    monkeypatch.chdir(tmp_path / "data")  # the path is the YAML's folder's, not the working folder's
    assert [(i["prompt"], i["category"], i["kind"]) for i in items_of(str(tmp_path / "mine.yaml"))] == [
        ("how to hurt", "violence", "harmful"), ("hi", "greet", "harmful")]


def test_parquet_file(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"prompt": ["a", "b"], "id": ["x", "y"]}), tmp_path / "p.parquet")
    assert [(i["id"], i["prompt"]) for i in items_of(str(tmp_path / "p.parquet"))] == [("x", "a"), ("y", "b")]


@pytest.mark.parametrize("content, expected", [
    (b'{"prompt": "a"}\n{bad\n', "line 2: not valid JSON"),
    (b'\xff\xfe{"prompt": "a"}\n', "line 1: not UTF-8 text (byte 0xff)"),
    (b'{"text": "a"}\n', "record 1: field 'prompt' is missing (fields: text)"),
    (b'{"prompt": "a", "kind": "evil"}\n', "field 'kind' = 'evil', expected one of harmful, benign, over-refusal"),
    (b'{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n', "id '1' is given to two records"),
])
def test_bad_file_is_one_line_naming_it(tmp_path, content, expected):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with pytest.raises(UsageError) as info:
        items_of(str(path))
    assert str(path) in str(info.value) and expected in str(info.value) and "\n" not in str(info.value)


def test_unknown_names_and_missing_files():
    with pytest.raises(UsageError, match=r"unknown suite 'nope'; available: .*tiny-harmful"):
        suites.load_suite("nope")
    with pytest.raises(UsageError, match="suite file 'gone.jsonl' not found"):
        suites.load_suite("gone.jsonl")
    with pytest.raises(UsageError, match="unknown option 'field'"):
        suites.load_suite("hub:org/data:test?field=x")


def test_hub_dataset_from_a_local_folder_in_the_hub_layout(tmp_path):
    """The hub source reads through datasets' load_dataset, which reads a local folder laid out as
    on the hub (data/SPLIT-00000-of-00001.parquet) the way it reads a cached hub dataset."""
    pytest.importorskip("datasets")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    folder = tmp_path / "PKU-SafeRLHF"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"prompt": ["p1", "p1", "p2"], "category": ["a", "a", "b"]}),
                   folder / "data" / "test-00000-of-00001.parquet")
    found = items_of(f"hub:{folder}@v0:test?kind=harmful")
    # one item per distinct prompt, ids by the row's place in the split
    assert found == [{"id": "test-0", "prompt": "p1", "category": "a", "kind": "harmful"},
                     {"id": "test-2", "prompt": "p2", "category": "b", "kind": "harmful"}]
    with pytest.raises(UsageError, match="'question': not a column of .* \\(columns: prompt, category\\)"):
        items_of(f"hub:{folder}:test?prompt=question")


def test_config_file_and_suite_file_from_outside_the_package_on_the_command_line(tmp_path):
    """`--config` takes a preset file anywhere; its suites may be files; a bad one stops the run
    before anything is built, in one line, exit 2."""
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(json.dumps({"prompt": "x"}) + "\n{oops\n")
    config = tmp_path / "mine.yaml"
    config.write_text(f"methods: [sft]\nsuites: [{bad}]\ntrainers:\n  sft: {{epochs: 0}}\n")
    result = run_cli("run", "--config", str(config), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"safebench: error: {config}: field 'trainers.sft.epochs' = 0: " \
                                    "Input should be greater than 0"
    config.write_text(f"methods: [sft]\nsuites: [{bad}]\n")
    result = run_cli("run", "--config", str(config), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"{bad} line 2: not valid JSON" in result.stderr
    assert not (tmp_path / "run").exists()
