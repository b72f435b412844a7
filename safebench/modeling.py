"""Loading and saving policies and score models; the prompt templates; tokenisation; end scores.

Checkpoints are ordinary safetensors directories: `AutoModelForCausalLM.from_pretrained`
loads a policy, `AutoModelForSequenceClassification` (num_labels=1) a reward or cost model.

Precision (Safe RLHF trains with DeepSpeed bf16, SACPO with TRL `bf16=True`: both keep fp32
master weights and compute in bf16): a model being trained holds float32 parameters and runs
its forward passes under `autocast(dtype)`; frozen models (reference, scorers) are loaded in
the config's dtype; checkpoints are saved in the config's dtype.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from safebench.errors import UsageError

if TYPE_CHECKING:
    import torch

PLAIN_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"


def torch_dtype(name: str) -> torch.dtype:
    """A config's `dtype` ("float32" or "bfloat16") as torch's."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def autocast(dtype: str, device_type: str = "cpu"):
    """The forward passes of a float32-weighted model in `dtype`: bf16 autocast, or nothing for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device_type, dtype=torch_dtype(dtype))


def trainable_in_float32(model):
    """Trainable parameters as float32 master weights (LoRA adapters on a bf16 base, a copied head)."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def format_prompt(tokenizer, prompt: str, template: str) -> str:
    """The text a model sees before its answer: Safe RLHF's plain template or the model's chat template."""
    if template == "plain":
        return PLAIN_TEMPLATE.format(prompt=prompt)
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise UsageError(f"template 'chat': tokenizer {tokenizer.name_or_path!r} has no chat template; use template: plain")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    raise UsageError(f"template {template!r}: expected 'plain' or 'chat'")


def leading_bos(tokenizer) -> int | None:
    """The BOS id the tokenizer puts first when it adds its special tokens, else None.

    Safe RLHF tokenises with the tokenizer's special tokens (`add_special_tokens=True` in
    safe_rlhf/datasets/base.py `TokenizedDataset.tokenize`): a Llama tokenizer (Alpaca-7B,
    the beaver score models) starts every text with BOS; GPT-2-style tokenizers and the tiny
    world's add nothing. Only the leading BOS is taken: the eos after a response is appended
    explicitly (`encode_pair`).
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    return bos if tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos] else None


def encode_prompt(tokenizer, prompt_text: str) -> list[int]:
    """Token ids of a formatted prompt, starting with the tokenizer's BOS once (a chat template
    that writes the BOS into the text already has it)."""
    ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    bos = leading_bos(tokenizer)
    if bos is not None and ids[:1] != [bos]:
        ids = [bos] + ids
    return ids


def encode_pair(tokenizer, prompt_text: str, response: str | None, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt (+ response + eos) and the number of prompt tokens.

    Prompt and response are tokenised separately, as at generation time, so the response
    tokens a model is trained on are the ones it would produce after that prompt.
    """
    prompt_ids = encode_prompt(tokenizer, prompt_text)
    if response is None:
        return prompt_ids[-max_length:], min(len(prompt_ids), max_length)
    response_ids = tokenizer(" " + response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + response_ids)[:max_length]
    return ids, min(len(prompt_ids), len(ids))


def pad_batch(sequences: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if side == "right":
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        else:
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
    return ids, mask


def token_scores(model, input_ids, attention_mask, position_ids=None):
    """A sequence-classification model's head on every position's hidden state [B, L] (float32)."""
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    return model.score(hidden).squeeze(-1).float()


def last_attended(values, attention_mask):
    """Each row's value at its last attended position (left or right padding)."""
    width = attention_mask.shape[1]
    last = width - 1 - attention_mask.long().flip(-1).argmax(-1)
    return values.gather(-1, last.unsqueeze(-1)).squeeze(-1)


def end_scores(model, input_ids, attention_mask, position_ids=None):
    """A reward or cost model's score of each sequence: the head at the last attended token.

    As Safe RLHF's score models read it (safe_rlhf/models/score_model/__init__.py: `end_index`
    from the attention mask), and as RL reads it. Not transformers' own pooling, which takes the
    last token that is not `pad_token_id`: with pad == eos (SmolLM2, any tokenizer padded with
    eos) that skips the eos ending every response.
    """
    return last_attended(token_scores(model, input_ids, attention_mask, position_ids), attention_mask)


def check_model_dir(path: str | Path, what: str = "model") -> Path:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} path '{path}' does not exist")
    if not (path / "config.json").exists():
        raise UsageError(f"{what} path '{path}' is not a checkpoint directory (no config.json)")
    return path


@contextlib.contextmanager
def readable_checkpoint(path: str | Path) -> Iterator[None]:
    """Around loading a checkpoint: a truncated or corrupt file is bad input, said in one line."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the machine's error (cli.main says which), not the checkpoint's
        first = (str(exc).splitlines() or [""])[0][:200]
        raise UsageError(f"{path}: the checkpoint cannot be loaded ({type(exc).__name__}: {first}); replace it "
                         "(a run's own checkpoints are rebuilt by rerunning `safebench run`)") from None


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    with readable_checkpoint(path):
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(path: str | Path, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM

    with readable_checkpoint(path):
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype))


def load_score_model(path: str | Path, dtype: str = "float32"):
    from transformers import AutoModelForSequenceClassification

    # Safe RLHF's published score models (beaver-7b-v1.0-reward/-cost) name their head
    # `score_head`; transformers' sequence classifiers call it `score`.
    with readable_checkpoint(path):
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=torch_dtype(dtype), key_mapping={r"^score_head\.": "score."})
        bias = _score_head_bias(Path(path))
    if bias is not None and model.score.bias is None:
        # safe-rlhf's score head may have a bias (its config's `bias: true`); transformers' Llama
        # classifier has none and would drop it, shifting every score by that constant.
        import torch

        head = torch.nn.Linear(model.score.in_features, model.score.out_features, bias=True,
                               dtype=model.score.weight.dtype, device=model.score.weight.device)
        with torch.no_grad():
            head.weight.copy_(model.score.weight)
            head.bias.copy_(bias.reshape(head.bias.shape))
        model.score = head
    if model.config.pad_token_id is None:
        tokenizer = load_tokenizer(path)
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _score_head_bias(path: Path):
    """The score head's bias tensor stored in a local checkpoint (`score_head.bias` or `score.bias`), or None."""
    import torch

    names = ("score_head.bias", "score.bias")
    for weights in sorted(path.glob("*.safetensors")):
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            found = [name for name in names if name in handle.keys()]
            if found:
                return handle.get_tensor(found[0])
    for weights in sorted(path.glob("pytorch_model*.bin")):
        state = torch.load(weights, map_location="cpu", weights_only=True)
        found = [name for name in names if name in state]
        if found:
            return state[found[0]]
    return None


def save_checkpoint(model, tokenizer, out_dir: Path, dtype: str | None = None) -> None:
    """Write model and tokenizer; `dtype` casts the weights first (float32 masters saved as bf16)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = model.to(torch_dtype(dtype))
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
