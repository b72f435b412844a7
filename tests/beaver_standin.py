"""A tiny stand-in of a safe-rlhf score model (beaver-7b-v1.0-reward/-cost) in its checkpoint format:
architecture LlamaForScore, the backbone's weights under `model.`, a linear `score_head` (with a
bias when its config says `bias: true`), the safe-rlhf config fields score_dim, bias and score_type."""

from __future__ import annotations

import json
from pathlib import Path


def write_beaver_score_model(out: Path, *, bias: float, score_type: str = "cost", seed: int = 0) -> Path:
    """A beaver-format score model over the tiny world's tokenizer whose head has zero weights and
    bias `bias`: every end score it gives is exactly `bias`."""
    import torch
    from safetensors.torch import save_file

    from safebench.world import tiny

    tokenizer = tiny.build_tokenizer()
    policy = tiny.build_policy(tokenizer, hidden_size=32, num_layers=1, num_heads=1, intermediate_size=16,
                               max_position_embeddings=160, seed=seed)
    state = {k: v.contiguous() for k, v in policy.state_dict().items() if k.startswith("model.")}
    state["score_head.weight"] = torch.zeros(1, policy.config.hidden_size)
    state["score_head.bias"] = torch.tensor([float(bias)])
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    config = policy.config.to_dict()
    config.update(architectures=["LlamaForScore"], score_dim=1, bias=True, score_type=score_type)
    (out / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(out)
    return out


def hub_cache_standin(hf_home: Path, repo_id: str, revision: str, folder: Path) -> Path:
    """`folder`'s files laid out as the Hugging Face hub cache holds a model downloaded at `revision`
    (HF_HOME/hub/models--ORG--NAME/{refs/REVISION, snapshots/COMMIT/...}), so that an offline run
    (HF_HUB_OFFLINE=1) finds it by hub id as it would after a download."""
    import hashlib
    import shutil

    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return repo / "snapshots" / commit
