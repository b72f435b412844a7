"""Loading and saving policies and score models; the prompt templates; tokenisation; end scores.

Checkpoints are ordinary safetensors directories: `AutoModelForCausalLM.from_pretrained`
loads a policy, `AutoModelForSequenceClassification` (num_labels=1) a reward or cost model.
A score model's backbone may be a decoder (the SFT model, as in Safe RLHF) or an encoder such
as a sentence transformer; `config.score_pooling`, saved with the checkpoint, says how its
hidden states become one score (POOLINGS).

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
    explicitly (`encode_pair`). An encoder's tokenizer (BERT) has no BOS but opens with its CLS.
    """
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
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
    # an encoder's tokenizer ends a text with SEP where a decoder's has eos
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is not None:
        response_ids = response_ids + [eos]
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


# How a score model turns a sequence into one score (config.score_pooling):
#   last   the head at the last attended token: Safe RLHF's end score, for decoders (a causal
#          model's last token has read the whole text); what RL's critics read at every token
#   mean   the head on the mean of the attended tokens' last hidden states, and
#   cls    the head on the first token's: an encoder reads the text both ways, so its last token
#          is no summary; a sentence encoder is read as it was trained to embed a text (its
#          sentence-transformers 1_Pooling/config.json; all-MiniLM-L6-v2 says mean)
#   model  the model's own classification forward (its pooler as trained): a published encoder
#          sequence classifier, e.g. an existing reward model
POOLINGS = ("last", "mean", "cls", "model")
SENTENCE_POOLING_FILE = "1_Pooling/config.json"
PLAIN_CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}BEGINNING OF CONVERSATION: USER: "
                       "{{ m['content'] }} ASSISTANT:{% endif %}{% endfor %}")


def score_head(model):
    """The linear head of a sequence classifier: `score` in transformers' decoders, `classifier` in its encoders."""
    head = getattr(model, "score", None)
    return head if head is not None else getattr(model, "classifier", None)


def default_pooling(path: str | Path, model) -> str:
    """The pooling of a backbone that names none: `last` for a decoder (a `score` head), the
    sentence-transformers pooling for a sentence encoder, else the classifier's own forward."""
    import json

    if getattr(model, "score", None) is not None:
        return "last"
    pooling_file = Path(path) / SENTENCE_POOLING_FILE
    if pooling_file.is_file():
        modes = json.loads(pooling_file.read_text(encoding="utf-8"))
        for mode, name in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls")):
            if modes.get(mode):
                return name
        raise UsageError(f"{pooling_file}: a sentence pooling safebench does not read "
                         f"({', '.join(k for k, v in modes.items() if v is True)}); expected mean or cls tokens")
    return "model"


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
    """A reward or cost model's score of each sequence: a decoder's head at the last attended
    token; an encoder's as its `config.score_pooling` says (POOLINGS).

    As Safe RLHF's score models read it (safe_rlhf/models/score_model/__init__.py: `end_index`
    from the attention mask), and as RL reads it. Not transformers' own pooling, which takes the
    last token that is not `pad_token_id`: with pad == eos (SmolLM2, any tokenizer padded with
    eos) that skips the eos ending every response.
    """
    pooling = getattr(getattr(model, "config", None), "score_pooling", None) or "last"
    if pooling == "last":
        return last_attended(token_scores(model, input_ids, attention_mask, position_ids), attention_mask)
    if pooling == "model":
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    return score_head(model)(pooled).squeeze(-1).float()


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
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=torch_dtype(dtype), key_mapping={r"^score_head\.": "score."},
            output_loading_info=True)
        if "score.bias" in info["unexpected_keys"]:
            _add_score_bias(model, path)
    if getattr(model.config, "score_pooling", None) is None:
        model.config.score_pooling = default_pooling(path, model)
    elif model.config.score_pooling not in POOLINGS:
        raise UsageError(f"{path}/config.json: score_pooling = {model.config.score_pooling!r}; "
                         f"expected one of {', '.join(POOLINGS)}")
    if model.config.pad_token_id is None:
        tokenizer = load_tokenizer(path)
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _add_score_bias(model, path: str | Path) -> None:
    """Give the `score` head the bias the checkpoint holds: Safe RLHF builds its `score_head` with
    `bias=config.bias`, while transformers' decoder classifiers have none and would drop it."""
    import torch
    from safetensors import safe_open

    folder = Path(path)
    if not folder.is_dir():  # a hub id: from_pretrained has just put its files in the HF cache
        from safebench.assets import hub_snapshot

        folder = hub_snapshot(str(path), None, None, where="score model")
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as weights:
            name = next((k for k in ("score_head.bias", "score.bias") if k in weights.keys()), None)
            if name is None:
                continue
            old = model.score
            model.score = torch.nn.Linear(old.in_features, old.out_features, bias=True,
                                          dtype=old.weight.dtype, device=old.weight.device)
            with torch.no_grad():
                model.score.weight.copy_(old.weight)
                model.score.bias.copy_(weights.get_tensor(name).reshape(-1))
            model.config.bias = True  # as Safe RLHF records it
            return
    raise UsageError(f"{path}: the checkpoint holds a score-head bias in no safetensors file; "
                     "convert it to safetensors")


def save_checkpoint(model, tokenizer, out_dir: Path, dtype: str | None = None) -> None:
    """Write model and tokenizer; `dtype` casts the weights first (float32 masters saved as bf16)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = model.to(torch_dtype(dtype))
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
