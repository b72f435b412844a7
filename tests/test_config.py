"""Config validation: every error names the file, the field path, the bad value and what is allowed."""

from __future__ import annotations

import shutil

import pytest

from safebench import config as config_module
from safebench import registry
from safebench.errors import UsageError
from tests.helpers import ROOT, run_cli


def resolve(*overrides, methods=None, preset="tiny"):
    return config_module.resolve(preset, methods, list(overrides))


def test_defaults_come_from_recipe_then_preset_then_override():
    config, recipes = resolve("trainers.sft.weight_decay=0.05")
    sft = config.trainers["sft"]
    assert sft["warmup_ratio"] == 0.03            # the Recipe class (Safe RLHF default)
    assert sft["lr"] == pytest.approx(3e-3)       # tiny preset
    assert sft["weight_decay"] == pytest.approx(0.05)  # --set
    assert recipes["sft"].weight_decay == pytest.approx(0.05)


def test_override_accepts_yaml_1_1_exponent_as_number():
    config, _ = resolve("trainers.sft.lr=1e-5")
    assert config.trainers["sft"]["lr"] == pytest.approx(1e-5)


@pytest.mark.parametrize("override, expected", [
    ("trainers.sft.lr=abc", "--set trainers.sft.lr: field 'trainers.sft.lr' = 'abc'"),
    ("trainers.sft.epochs=-1", "field 'trainers.sft.epochs' = -1: Input should be greater than 0"),
    ("trainers.sft.bogus=1", "unknown field 'trainers.sft.bogus'"),
    ("generation.backend=xyz", "field 'generation.backend' = 'xyz': unknown backend 'xyz'; available: hf, openai, vllm"),
    ("policy.template=weird", "expected 'plain' or 'chat'"),
    ("suites=[nosuch]", "unknown suite 'nosuch'; available: "),
    ("seed=notanint", "field 'seed' = 'notanint'"),
])
def test_bad_values_name_field_value_and_expectation(override, expected):
    with pytest.raises(UsageError) as info:
        resolve(override)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_method_lists_available_ones():
    with pytest.raises(UsageError, match=r"unknown method 'nope'; available: .*sft"):
        resolve(methods=["sft", "nope"])


def test_override_without_equals_is_a_usage_error():
    with pytest.raises(UsageError, match="expected FIELD.PATH=VALUE"):
        resolve("trainers.sft.lr")


@pytest.fixture
def project_copy(tmp_path, monkeypatch):
    """A copy of trainers/ and evals/ that a test may break, found through SAFEBENCH_HOME."""
    for folder in ("trainers", "evals"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.setenv("SAFEBENCH_HOME", str(tmp_path))
    return tmp_path


def test_error_names_the_recipe_file_that_holds_the_bad_value(project_copy):
    path = project_copy / "trainers" / "sft.yaml"
    path.write_text(path.read_text() + "warmup_ratio: 1.5\n")
    with pytest.raises(UsageError) as info:
        resolve()
    assert str(info.value).startswith("trainers/sft.yaml: field 'trainers.sft.warmup_ratio' = 1.5")


def test_error_names_the_preset_file(project_copy):
    path = project_copy / "trainers" / "presets" / "tiny.yaml"
    path.write_text(path.read_text().replace("max_new_tokens: 32", "max_new_tokens: lots"))
    with pytest.raises(UsageError) as info:
        resolve()
    assert str(info.value).startswith("trainers/presets/tiny.yaml: field 'generation.max_new_tokens' = 'lots'")


def test_invalid_yaml_names_file_and_line(project_copy):
    path = project_copy / "trainers" / "sft.yaml"
    path.write_text("trainer: sft\nlr: [1, 2\n")
    with pytest.raises(UsageError, match=r"sft.yaml: line \d+ invalid YAML"):
        resolve()


@pytest.mark.parametrize("args, expected", [
    (["--set", "trainers.sft.lr=abc"], "trainers.sft.lr"),
    (["--methods", "sft,sacpo[beta_over_lambda=0.1,bogus=2]"], "unknown field 'bogus' of method 'sacpo'"),
])
def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, args, expected):
    out = tmp_path / "run"
    result = run_cli("run", "--preset", "tiny", *args, "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert expected in result.stderr
    assert not out.exists()


def test_sweep_expands_a_list_into_method_variants(project_copy):
    # A method recipe the sweep can act on: a second SFT-trained method, defined only for this test.
    (project_copy / "trainers" / "sft-copy.yaml").write_text("trainer: sft\nrole: method\n")
    config, recipes = resolve("trainers.sft-copy.lr=[0.01,0.02]", methods=["sft", "sft-copy"])
    assert config.methods == ["sft", "sft-copy[lr=0.01]", "sft-copy[lr=0.02]"]
    assert recipes["sft-copy[lr=0.02]"].lr == pytest.approx(0.02)
    assert "sft-copy" not in recipes


def test_shared_stages_cannot_be_swept():
    with pytest.raises(UsageError, match="cannot sweep 'sft'"):
        resolve("trainers.sft.lr=[0.1,0.2]")


def test_registry_lists_what_exists():
    assert "sft" in registry.method_names()
    assert "reward-model" not in registry.method_names()
    assert {"tiny-harmful", "tiny-benign", "tiny-over-refusal"} <= set(registry.suite_names())
    assert "tiny" in registry.preset_names()


# --- method variants: NAME[FIELD=VALUE,...] in the method list ------------------------------------

def test_method_list_variant_resolves_to_that_recipe_field():
    config, recipes = resolve(methods=["sft", "sacpo[beta_over_lambda=0.01]", "sacpo[beta_over_lambda=1e-1]"])
    assert config.methods == ["sft", "sacpo[beta_over_lambda=0.01]", "sacpo[beta_over_lambda=0.1]"]
    assert recipes["sacpo[beta_over_lambda=0.01]"].beta_over_lambda == pytest.approx(0.01)
    assert recipes["sacpo[beta_over_lambda=0.1]"].beta_over_lambda == pytest.approx(0.1)
    # every other field is sacpo's as the preset sets it (tiny: lr 1e-4), and the plain method is no stage
    assert recipes["sacpo[beta_over_lambda=0.01]"].lr == pytest.approx(1e-4)
    assert "sacpo" not in recipes and "sacpo" not in config.trainers


def test_variant_names_have_one_spelling_whichever_way_they_are_asked_for():
    spelled = resolve(methods=["sacpo[lr=2e-4,beta_over_lambda=0.050]"])[0].methods
    swept = resolve("trainers.sacpo.beta_over_lambda=[0.05]", "trainers.sacpo.lr=[0.0002]", methods=["sacpo"])[0].methods
    assert spelled == swept == ["sacpo[beta_over_lambda=0.05,lr=0.0002]"]  # recipe field order, values as printed


def test_a_variant_with_settings_its_method_has_is_trained_as_that_method():
    # tiny: sacpo's β/λ is the recipe's 0.025 and its lr the preset's 1e-4; ppo-lag's actor_lr 5e-4
    asked = ["sacpo", "sacpo[beta_over_lambda=0.025]", "sacpo[lr=1e-4]", "sacpo[beta=0.1]",
             "sacpo[beta_over_lambda=0.05]", "sacpo[beta_over_lambda=0.05,lr=0.0001]", "ppo-lag[actor_lr=5e-4]"]
    config, recipes = resolve(methods=asked)
    assert config.methods == [*asked[:2], "sacpo[lr=0.0001]", *asked[3:6], "ppo-lag[actor_lr=0.0005]"]
    assert {name: config.trained_as(name) for name in config.methods} == {
        "sacpo": "sacpo", "sacpo[beta_over_lambda=0.025]": "sacpo", "sacpo[lr=0.0001]": "sacpo",
        "sacpo[beta=0.1]": "sacpo",  # β null is 0.1 for the helpfulness step
        "sacpo[beta_over_lambda=0.05]": "sacpo[beta_over_lambda=0.05]",
        "sacpo[beta_over_lambda=0.05,lr=0.0001]": "sacpo[beta_over_lambda=0.05]",
        "ppo-lag[actor_lr=0.0005]": "ppo-lag"}
    # the stage of the plain name is trained (a recipe of the run) though no method has that name
    assert "ppo-lag" in recipes and "ppo-lag" in config.trainers and "ppo-lag" not in config.methods
    assert recipes["ppo-lag"] == recipes["ppo-lag[actor_lr=0.0005]"]


def test_settings_from_set_count_and_a_swept_value_equal_to_the_unswept_one_is_the_method():
    config, _ = resolve("trainers.sacpo.lr=3e-4", methods=["sacpo[lr=3e-4]", "sacpo[lr=1e-4]"])
    assert [config.trained_as(m) for m in config.methods] == ["sacpo", "sacpo[lr=0.0001]"]
    config, recipes = resolve("trainers.sacpo.beta_over_lambda=[0.025,0.1]", methods=["sacpo"])
    assert config.methods == ["sacpo[beta_over_lambda=0.025]", "sacpo[beta_over_lambda=0.1]"]
    assert [config.trained_as(m) for m in config.methods] == ["sacpo", "sacpo[beta_over_lambda=0.1]"]
    assert recipes["sacpo"].beta_over_lambda == pytest.approx(0.025)


@pytest.mark.parametrize("method, expected", [
    ("sacpo[beta_over_lambda=0.1", "method 'sacpo[beta_over_lambda=0.1': expected NAME or NAME[FIELD=VALUE,...]"),
    ("sacpo[beta_over_lambda]", "'beta_over_lambda' is not FIELD=VALUE"),
    ("sacpo[bogus=1]", "unknown field 'bogus' of method 'sacpo'; expected one of order, only,"),
    ("sacpo[beta_over_lambda=abc]", "field 'trainers.sacpo[beta_over_lambda=abc].beta_over_lambda' = 'abc'"),
    ("sacpo[beta_over_lambda=-1]", "= -1: Input should be greater than 0"),
    ("sacpo[beta_over_lambda=0.1,beta_over_lambda=0.2]", "field 'beta_over_lambda' is given twice"),
    ("sacpo[needs=sft]", "field 'needs' is a list"),
    ("nosuch[lr=1]", "unknown method 'nosuch' in 'nosuch[lr=1]'; available: "),
    ("sft[lr=0.1]", "sft has no variants"),
])
def test_bad_variant_is_a_one_line_error_naming_the_method(method, expected):
    with pytest.raises(UsageError) as info:
        resolve(methods=["sft", method])
    assert str(info.value).startswith("--methods: ")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_method_list_keeps_commas_inside_a_variant():
    from safebench.cli import _methods

    assert _methods("sft, sacpo[beta_over_lambda=0.01,lr=1e-4],dpo-h") == [
        "sft", "sacpo[beta_over_lambda=0.01,lr=1e-4]", "dpo-h"]


def test_a_default_changed_in_the_recipe_class_reaches_the_run_config(monkeypatch):
    """The Recipe classes own the defaults: no recipe YAML restates them."""
    from pydantic import Field

    from safebench.trainers import ppo_lag

    class Changed(ppo_lag.Recipe):
        kl_coeff: float = Field(0.05, ge=0)
        episode_cost_window_size: int = Field(512, ge=1)

    class Module:
        Recipe = Changed

    trainer_module = registry.trainer_module
    monkeypatch.setattr(registry, "trainer_module", lambda name: Module if name == "ppo_lag" else trainer_module(name))
    config, recipes = resolve(methods=["ppo-lag"], preset="paper")
    assert config.trainers["ppo-lag"]["kl_coeff"] == 0.05
    assert config.trainers["ppo-lag"]["episode_cost_window_size"] == 512


def test_recipe_files_state_only_what_they_change():
    for name in registry.recipe_names():
        data = registry.load_recipe(name)
        recipe_class = registry.trainer_module(data["trainer"]).Recipe
        restated = [key for key, value in data.items() if key not in ("trainer", "role", "description")
                    and key in recipe_class.model_fields and recipe_class.model_fields[key].default == value]
        assert restated == [], f"trainers/{name}.yaml restates its Recipe class's defaults: {restated}"


def test_the_published_batch_sizes_are_global():
    """Safe RLHF's scripts give per-device sizes for 8 GPUs, line/sacpo's scripts 16 a GPU x 2
    accumulation on 8 GPUs (first step) and 2 GPUs (second): safebench's sizes are the products."""
    config, recipes = resolve(methods=["ppo-lag", "repo", "sacpo"], preset="paper")
    assert (recipes["sft"].batch_size, recipes["sft"].micro_batch_size) == (4 * 8 * 8, 4)
    for name in ("reward-model", "cost-model"):
        assert (recipes[name].batch_size, recipes[name].micro_batch_size) == (16 * 8, 16)
    for name in ("ppo-lag", "repo"):
        assert (recipes[name].prompt_batch_size, recipes[name].train_batch_size) == (16 * 8, 16 * 8)
    assert recipes["ppo-lag"].episode_cost_window_size == 128 * 8
    assert [s["batch_size"] for s in recipes["sacpo"].step_plan()] == [16 * 2 * 8, 16 * 2 * 2]
    assert all(recipes[name].adam_betas == (0.9, 0.95) for name in ("sft", "reward-model", "ppo-lag"))


def test_weight_decay_spares_biases_and_layer_norms_only():
    """Safe RLHF's get_optimizer_grouped_parameters: no decay for 'bias' and 'LayerNorm.weight'
    (lower-cased), so Llama's final norm and the embeddings decay."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from safebench.trainers.loop import decay_groups

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, attention_bias=True))
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in group["params"]} for group in decay_groups(model, 0.1))
    assert {"model.norm.weight", "model.embed_tokens.weight", "lm_head.weight"} <= decay
    assert no_decay == {n for n in names.values() if "layernorm" in n or n.endswith("bias")}
    assert any(n.endswith("bias") for n in no_decay)


def test_an_optional_list_field_takes_a_list_and_is_not_a_sweep():
    config, recipes = resolve("trainers.ppo-lag.rl_prompt_kinds=[harmful]", methods=["sft", "ppo-lag"])
    assert config.methods == ["sft", "ppo-lag"]
    assert recipes["ppo-lag"].rl_prompt_kinds == ["harmful"]
    config, recipes = resolve("trainers.ppo-lag.rl_prompt_kinds=null", methods=["sft", "ppo-lag"])
    assert recipes["ppo-lag"].rl_prompt_kinds is None
