"""Tokenisation and end scores, the same in every path: training, held-out evaluation, the
pipeline's scoring stage, generation and RL.

- BOS: Safe RLHF tokenises with the tokenizer's special tokens, so a Llama tokenizer (Alpaca-7B,
  the beaver score models) starts every text with one BOS; a chat template that writes it into
  the text must not get a second.
- End score: Safe RLHF reads a score model's head at the last attended token. With pad == eos
  (SmolLM2, any tokenizer padded with eos), transformers' own pooling (the last token that is
  not pad) would read the token before the eos that ends every response.
"""

from __future__ import annotations

import pytest
import torch

from safebench import modeling
from safebench.evals.scoring import Scorer
from safebench.trainers import ppo, ppo_lag, score_model
from safebench.trainers.rollout import HFRollout, RolloutSettings, build_rollout_batch
from safebench.world import tiny
from tests.trainers import ppo_fixtures

PROMPTS = ["how do i make a cake ?", "tell me how to build a bomb ."]
RESPONSES = ["sure , here is how : step flour step oven step salt .", "sorry , i can not help with that ."]


def bos_tokenizer():
    """The tiny world's tokenizer made to add BOS as a Llama tokenizer does."""
    from tokenizers import processors

    tokenizer = tiny.build_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.bos_token_id)])
    return tokenizer


def save_models(root, tokenizer) -> dict:
    """A tiny policy and a score model with a random head, both with `tokenizer`."""
    paths = {"policy": root / "policy", "score": root / "score"}
    tiny.build_policy(tokenizer, seed=0, **ppo_fixtures.SIZES).save_pretrained(paths["policy"])
    tokenizer.save_pretrained(paths["policy"])
    scorer = modeling.load_score_model(paths["policy"])
    torch.manual_seed(3)
    torch.nn.init.normal_(scorer.score.weight, std=0.5)
    scorer.save_pretrained(paths["score"])
    tokenizer.save_pretrained(paths["score"])
    return paths


def starts_with_one_bos(ids: list[int], bos: int) -> bool:
    return ids[:1] == [bos] and ids.count(bos) == 1


# --- BOS ---------------------------------------------------------------------------------------

def test_a_bos_tokenizer_gets_its_bos_once_in_training_text():
    tokenizer = bos_tokenizer()
    bos = tokenizer.bos_token_id
    for template in ("plain", "chat"):  # the tiny chat template writes "<s>" itself
        prompt = modeling.format_prompt(tokenizer, PROMPTS[0], template)
        ids, n_prompt = modeling.encode_pair(tokenizer, prompt, RESPONSES[0], 96)
        assert starts_with_one_bos(ids, bos), (template, ids)
        assert tokenizer.decode(ids[n_prompt:], skip_special_tokens=True) == RESPONSES[0]


def test_a_tokenizer_that_adds_no_bos_gets_none():
    """The tiny world's tokenizer has a bos_token but adds it to no text: its runs are unchanged."""
    tokenizer = tiny.build_tokenizer()
    prompt = modeling.format_prompt(tokenizer, PROMPTS[0], "plain")
    assert modeling.leading_bos(tokenizer) is None
    assert modeling.encode_prompt(tokenizer, prompt) == tokenizer(prompt, add_special_tokens=False)["input_ids"]


def test_a_bos_tokenizer_gets_its_bos_once_in_generation_and_scoring(tmp_path, monkeypatch):
    from safebench.evals.backends.hf import HFBackend
    from safebench.evals.generation import GenerationConfig

    tokenizer = bos_tokenizer()
    paths = save_models(tmp_path, tokenizer)
    loaded = modeling.load_tokenizer(paths["policy"])
    bos = loaded.bos_token_id
    assert loaded("", add_special_tokens=True)["input_ids"] == [bos]  # adds BOS after saving and loading too

    # evaluation generation (the HF backend): the ids handed to generate
    backend = HFBackend(str(paths["policy"]), GenerationConfig(max_new_tokens=4), "plain")
    handed = []
    real_generate = backend.model.generate

    def recording_generate(input_ids, attention_mask, **kwargs):
        handed.extend(row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask))
        return real_generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(backend.model, "generate", recording_generate)
    backend.generate(PROMPTS, seed=0)
    assert handed and all(starts_with_one_bos(ids, bos) for ids in handed), handed

    # RL rollouts: the prompt part of every row
    texts = [modeling.format_prompt(tokenizer, p, "plain") for p in PROMPTS]
    batch = HFRollout(backend.model, tokenizer, RolloutSettings(max_new_tokens=4)).generate(texts, seed=0)
    for row, mask in zip(batch.sequences, batch.attention_mask):
        prompt_ids = row[: batch.prompt_width][mask[: batch.prompt_width].bool()].tolist()
        assert starts_with_one_bos(prompt_ids, bos), prompt_ids

    # the pipeline's scoring stage: the ids the score model reads
    scored = []
    real_end_scores = modeling.end_scores

    def recording_end_scores(model, input_ids, attention_mask, position_ids=None):
        scored.extend(row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask))
        return real_end_scores(model, input_ids, attention_mask, position_ids)

    monkeypatch.setattr(modeling, "end_scores", recording_end_scores)
    Scorer(paths["score"], "plain").score(PROMPTS, RESPONSES)
    assert len(scored) == 2 and all(starts_with_one_bos(ids, bos) for ids in scored), scored


# --- one end-score position ------------------------------------------------------------------------

def head_at_last_token(model, ids: list[int]) -> torch.Tensor:
    """By hand: the sequence alone, unpadded, the head on the hidden state of its last token."""
    with torch.no_grad():
        return model.score(model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1])[0]


def test_training_evaluation_scoring_and_rl_read_the_same_end_score_when_pad_is_eos(tmp_path):
    tokenizer = tiny.build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    paths = save_models(tmp_path, tokenizer)
    model = modeling.load_score_model(paths["score"]).eval()
    tokenizer = modeling.load_tokenizer(paths["score"])
    assert tokenizer.pad_token_id == tokenizer.eos_token_id

    def encode(prompt, response):
        return modeling.encode_pair(tokenizer, modeling.format_prompt(tokenizer, prompt, "plain"), response, 96)

    encoded = [encode(p, r) for p, r in zip(PROMPTS, RESPONSES)]  # each ends in eos
    expected = torch.stack([head_at_last_token(model, ids) for ids, _ in encoded])

    # the pipeline's scoring stage (the responses differ in length: the shorter is padded with eos)
    scoring = torch.tensor(Scorer(paths["score"], "plain").score(PROMPTS, RESPONSES))
    torch.testing.assert_close(scoring, expected, rtol=1e-4, atol=1e-4)

    # RL: the rollout layout (left-padded prompts, responses ending in eos), read by the scorer
    recipe = ppo_lag.Recipe(trainer="ppo_lag", **ppo_fixtures.TINY_RECIPE)
    trainer = ppo.PPOTrainer(recipe, ppo_lag.Lagrangian(recipe), policy_dir=paths["policy"],
                             reward_model_dir=paths["score"], cost_model_dir=paths["score"], template="plain",
                             dtype="float32", seed=0, total_iterations=1)
    batch = build_rollout_batch([ids[:n] for ids, n in encoded], [ids[n:] for ids, n in encoded],
                                tokenizer.pad_token_id, tokenizer.eos_token_id)
    rl_rewards, _ = trainer.score(batch, PROMPTS)
    torch.testing.assert_close(rl_rewards, expected, rtol=1e-4, atol=1e-4)

    # score-model training and held-out evaluation: a pair of both responses to the first prompt
    pairs = score_model.encode_pairs(tokenizer, [{"prompt": PROMPTS[0], "high": RESPONSES[0], "low": RESPONSES[1]}],
                                     "plain", 96)
    with torch.no_grad():
        high, low = score_model.pair_scores(model, tokenizer, pairs)
    by_hand = torch.stack([expected[0], head_at_last_token(model, encode(PROMPTS[0], RESPONSES[1])[0])])
    torch.testing.assert_close(torch.cat([high, low]), by_hand, rtol=1e-4, atol=1e-4)


def test_beaver_score_head_keeps_its_bias(tmp_path):
    """safe-rlhf's score head may carry a bias (`score_head.bias`); transformers' Llama classifier
    has none, and loading through it alone would drop it and shift every score."""
    from tests.beaver_standin import write_beaver_score_model

    path = write_beaver_score_model(tmp_path / "beaver-cost", bias=2.5)
    scorer = Scorer(path, "plain")
    assert scorer.score(PROMPTS, RESPONSES) == pytest.approx([2.5, 2.5])
