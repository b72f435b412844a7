"""Build a local Hugging Face cache holding stand-ins for the paper preset's hub assets.

    python scripts/build_offline_hub.py DIR [--rows 48]
    HF_HOME=DIR HF_HUB_OFFLINE=1 safebench run --preset paper --set ... (sizes: see README "Paper preset")

Each stand-in has the repository id, revision, file names, config fields, tokenizer type and data
columns of the real asset, with tiny weights and rows built from the tiny world (safebench/world/tiny.py),
so that the preset's own loading code (safebench/assets.py `hub_snapshot`, data.py `_hub_records`,
modeling.py `load_score_model`, the pku-saferlhf-test suite) reads them exactly as it would read the
real ones from the cache a first online run leaves behind. Where each format comes from:

  PKU-Alignment/PKU-SafeRLHF @ v0 (dataset)
    columns   prompt, response_0, response_1, is_response_0_safe, is_response_1_safe,
              better_response_id, safer_response_id: the dataset card and safe-rlhf's
              safe_rlhf/datasets/raw/safe_rlhf.py, which reads exactly these
    files     round0/train.jsonl.xz and round0/test.jsonl.xz: the repository's tree at the 2023
              commits (huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF/tree/2d8577a/round0)
    splits    train, test
    cache     `datasets` offline reads the prepared copy (HF_HOME/datasets/PKU-Alignment___pku-safe_rlhf/
              default/0.0.0/COMMIT), not the snapshot: both are written, as an online load leaves them
              (datasets/load.py CachedDatasetModuleFactory). Offline, datasets takes the newest prepared
              copy whatever revision is asked for.
  PKU-Alignment/alpaca-7b-reproduced @ main (model)
    files     config.json, generation_config.json, added_tokens.json ({"<pad>": 32000} in the real one),
              pytorch_model-0000N-of-0000M.bin (pickled bf16 tensors) + pytorch_model.bin.index.json,
              tokenizer.model (sentencepiece), tokenizer_config.json (LlamaTokenizer),
              special_tokens_map.json: the tree at commit 3aa6180
    config    the published config.json's fields and values (LlamaForCausalLM, bos 1, eos 2,
              pad_token_id 0, rms_norm_eps 1e-06, max_position_embeddings 2048, untied, bf16),
              sizes shrunk; vocab = sentencepiece pieces + the added <pad>, as 32000 + 1 there
  PKU-Alignment/beaver-7b-v1.0-reward and -cost @ main (score models)
    files     config.json, model-0000N-of-0000M.safetensors + model.safetensors.index.json, tokenizer
              files as the policy's (the tree lists 7 safetensors shards and an index)
    config    LlamaForScore with bias false, score_dim 1, score_bias true, do_normalize false,
              normalizer_type null, score_type "reward" (the cost model's own config says "reward"
              too), pad_token_id 32000: huggingface.co/PKU-Alignment/beaver-7b-v1.0-cost config.json
    weights   keys model.* (the LlamaModel backbone) and score_head.weight, no bias: safe-rlhf's
              safe_rlhf/models/score_model (ScoreModelMixin.init_score_head: nn.Linear(hidden,
              score_dim, bias=config.bias)); no lm_head
Commits are stand-ins (sha1 of "safebench stand-in REPO@REV"), so a manifest never shows a real
commit for a fake file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATASET = "PKU-Alignment/PKU-SafeRLHF"
POLICY = "PKU-Alignment/alpaca-7b-reproduced"
SCORERS = ("PKU-Alignment/beaver-7b-v1.0-reward", "PKU-Alignment/beaver-7b-v1.0-cost")
COLUMNS = ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe",
           "better_response_id", "safer_response_id")
# Tiny sizes; head_dim 32 (the smallest vLLM serves), as the tiny world's model.
SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 2}
PIECES = 600  # sentencepiece vocabulary (Llama's has 32000)


def commit_of(repo: str, revision: str) -> str:
    return hashlib.sha1(f"safebench stand-in {repo}@{revision}".encode()).hexdigest()


def snapshot(hub: Path, kind: str, repo: str, revisions: tuple[str, ...]) -> Path:
    """The hub cache's folder for `repo` (kind 'models' or 'datasets'), with refs for each revision
    pointing at one stand-in commit (huggingface_hub's cache layout: refs/REV holds the commit)."""
    folder = hub / f"{kind}--{repo.replace('/', '--')}"
    commit = commit_of(repo, revisions[0])
    for revision in revisions:
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / revision).write_text(commit)
    path = folder / "snapshots" / commit
    path.mkdir(parents=True, exist_ok=True)
    return path


def records(rows: int) -> dict[str, list[dict]]:
    """PKU-SafeRLHF-shaped rows (only its columns) from the tiny world, train and test."""
    from safebench.world import tiny

    built = tiny.build_datasets(seed=0, train_prompts=rows, sft_per_prompt=1, pairs_per_prompt=1)
    train = [{k: r[k] for k in COLUMNS} for r in built["preference"]]
    test = [{k: r[k] for k in COLUMNS} for r in built["preference_heldout"][: max(8, rows // 4)]]
    return {"train": train, "test": test}


def write_dataset(home: Path, rows: int) -> None:
    from datasets.packaged_modules.json.json import Json

    root = snapshot(home / "hub", "datasets", DATASET, ("v0",))
    (root / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# PKU-SafeRLHF (safebench offline stand-in)\n")
    files = {}
    for split, rows_of_split in records(rows).items():
        path = root / "round0" / f"{split}.jsonl.xz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with lzma.open(path, "wt", encoding="utf-8") as sink:
            for row in rows_of_split:
                sink.write(json.dumps(row) + "\n")
        files[split] = [str(path)]
    # The prepared copy `datasets` reads offline, under the name an online load gives it.
    commit = root.name
    with tempfile.TemporaryDirectory() as tmp:
        builder = Json(cache_dir=tmp, dataset_name="pku-safe_rlhf", hash=commit, config_name="default", data_files=files)
        builder.download_and_prepare()
        target = home / "datasets" / "PKU-Alignment___pku-safe_rlhf" / "default" / "0.0.0" / commit
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(builder.cache_dir, target)
    info = json.loads((target / "dataset_info.json").read_text())
    info["config_name"] = "default"
    (target / "dataset_info.json").write_text(json.dumps(info))


def write_tokenizer(folder: Path, corpus: list[str]) -> int:
    """A Llama-type sentencepiece tokenizer (BPE, byte fallback, <unk> 0, <s> 1, </s> 2) plus the
    added <pad>, as alpaca-7b-reproduced's; returns the vocabulary size with <pad>."""
    import sentencepiece

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "corpus.txt"
        text.write_text("\n".join(corpus))
        sentencepiece.SentencePieceTrainer.train(
            input=str(text), model_prefix=str(Path(tmp) / "tokenizer"), vocab_size=PIECES, model_type="bpe",
            byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
            add_dummy_prefix=True, hard_vocab_limit=False, minloglevel=2)
        shutil.copy(Path(tmp) / "tokenizer.model", folder / "tokenizer.model")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "added_tokens.json").write_text(json.dumps({"<pad>": PIECES}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "model_max_length": 512, "padding_side": "right",
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False, "legacy": True,
        **special}, indent=2))
    return PIECES + 1


def llama_config(vocab: int, **extra) -> dict:
    """alpaca-7b-reproduced's published config.json with the sizes shrunk."""
    return {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
            "initializer_range": 0.02, "max_position_embeddings": 2048, "model_type": "llama",
            "pad_token_id": 0, "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "transformers_version": "4.29.2", "use_cache": True, "vocab_size": vocab, **SIZES, **extra}


def sharded(state: dict, shards: int) -> list[dict]:
    names = sorted(state)
    return [{n: state[n] for n in names[i::shards]} for i in range(shards)]


def write_policy(home: Path, corpus: list[str]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = snapshot(home / "hub", "models", POLICY, ("main",))
    vocab = write_tokenizer(root, corpus)
    config = llama_config(vocab)
    (root / "config.json").write_text(json.dumps(config, indent=2))
    (root / "generation_config.json").write_text(json.dumps(
        {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
         "transformers_version": "4.29.2"}, indent=2))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    parts = sharded(state, 2)
    weight_map = {}
    for i, part in enumerate(parts, 1):
        name = f"pytorch_model-{i:05d}-of-{len(parts):05d}.bin"
        torch.save(part, root / name)
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (root / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_scorer(home: Path, repo: str, corpus: list[str], seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaModel

    root = snapshot(home / "hub", "models", repo, ("main",))
    vocab = write_tokenizer(root, corpus)
    config = llama_config(vocab, architectures=["LlamaForScore"], attention_bias=False, attention_dropout=0.0,
                          bias=False, do_normalize=False, normalizer_type=None, pad_token_id=vocab - 1,
                          pretraining_tp=1, rope_scaling=None, rope_theta=10000.0, score_bias=True, score_dim=1,
                          score_type="reward", transformers_version="4.37.2")
    (root / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    backbone = LlamaModel(LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    state = {f"model.{k}": v.to(torch.bfloat16).contiguous() for k, v in backbone.state_dict().items()}
    state["score_head.weight"] = (torch.randn(1, SIZES["hidden_size"]) * 0.5).to(torch.bfloat16)
    parts = sharded(state, 2)
    weight_map = {}
    for i, part in enumerate(parts, 1):
        name = f"model-{i:05d}-of-{len(parts):05d}.safetensors"
        save_file(part, str(root / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (root / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def build(home: Path, rows: int) -> None:
    from safebench.modeling import PLAIN_TEMPLATE

    data = records(rows)
    corpus = [PLAIN_TEMPLATE.format(prompt=r["prompt"]) + " " + r["response_0"] + " " + r["response_1"]
              for split in data.values() for r in split]
    write_dataset(home, rows)
    write_policy(home, corpus)
    for seed, repo in enumerate(SCORERS, 1):
        write_scorer(home, repo, corpus, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path, help="the folder to use as HF_HOME")
    parser.add_argument("--rows", type=int, default=48, help="training prompts of the stand-in dataset")
    args = parser.parse_args()
    build(args.home.resolve(), args.rows)
    print(f"export HF_HOME={args.home.resolve()} HF_HUB_OFFLINE=1")


if __name__ == "__main__":
    main()
