"""Checks and helpers every generation backend shares, so that they fail and count alike."""

from __future__ import annotations

import json
from pathlib import Path

from safebench.errors import UsageError

# Architectures whose head predicts the next token; anything else (a reward model's
# *ForSequenceClassification, an encoder) cannot generate.
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")

VLLM_INSTALL_HINT = (
    "install it with `pip install -e '.[vllm]'` then `pip uninstall -y torchvision torchaudio torchcodec` "
    "(or run scripts/install-vllm.sh; on a GPU machine `pip install vllm`)"
)


def check_causal_lm(path: str | Path) -> dict:
    """The checkpoint's config.json, after checking the directory holds a causal LM."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"model path '{path}' does not exist")
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.exists():
        raise UsageError(f"model path '{path}' is not a checkpoint directory (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{config_file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    architectures = config.get("architectures") or []
    if architectures and not any(a.endswith(CAUSAL_SUFFIXES) for a in architectures):
        raise UsageError(
            f"model path '{path}' is not a causal LM (architectures: {', '.join(architectures)}); "
            "expected a *ForCausalLM checkpoint (a policy, not a reward or cost model)"
        )
    return config


def context_limit(config: dict) -> int | None:
    """The longest sequence (prompt + answer) the model was built for, if its config says."""
    for field in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(field) or (config.get("text_config") or {}).get(field)
        if value:
            return int(value)
    return None


def check_fits_context(prompt_tokens: int, max_new_tokens: int, limit: int | None, where: str = "generation") -> None:
    if limit and prompt_tokens + max_new_tokens > limit:
        raise UsageError(
            f"{where}: prompt ({prompt_tokens} tokens) + generation.max_new_tokens ({max_new_tokens}) "
            f"exceeds the model's context of {limit} tokens; lower generation.max_new_tokens"
        )


def request_seeds(batch_seed: int, count: int) -> list[int]:
    """One seed per request of a batch: sampling then depends on (batch seed, position) only,
    never on which other requests the engine happens to schedule alongside."""
    import numpy as np

    return [int(s) for s in np.random.SeedSequence(batch_seed).generate_state(count, dtype=np.uint32) % (2**31 - 1)]


def eos_token_ids(tokenizer, model_dir: str | Path) -> list[int]:
    """The ids that end an answer: the tokenizer's EOS plus any the checkpoint's
    generation_config.json adds (chat models often end turns with a second one).
    Every backend stops on exactly this set."""
    ids: list[int] = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    path = Path(model_dir) / "generation_config.json"
    if path.exists():
        extra = json.loads(path.read_text()).get("eos_token_id")
        for token in extra if isinstance(extra, list) else [extra]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


def answer_tokens(token_ids: list[int], eos_ids: list[int], pad_token_id: int | None) -> list[int]:
    """Generated ids up to and including the first EOS, the way every backend counts them.
    (HF pads finished rows with the pad id, so a pad that is not an EOS also ends the answer.)"""
    tokens: list[int] = []
    for token in token_ids:
        if token in eos_ids:
            tokens.append(token)
            break
        if token == pad_token_id:
            break
        tokens.append(token)
    return tokens
