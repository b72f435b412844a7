"""The one generation stage every checkpoint goes through, whatever the backend.

`GenerationConfig` is recorded with every output row (its hash) and is part of the stage's
cache key, so two models are only ever compared under the same settings. Rows are written
to the run database batch by batch; a killed stage resumes with the batches not yet done,
and because each batch's seed is derived from (seed, batch index), the resumed run
produces exactly what an uninterrupted one would have.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from safebench.errors import EndpointFailed
from safebench.hashing import stable_hash
from safebench.registry import Plugins, package_modules

# A backend NAME is safebench/evals/backends/NAME.py defining
# `make_backend(model_dir, config: GenerationConfig, template) -> Backend`.
BACKENDS = Plugins("backend", "safebench.evals.backends", "make_backend",
                   lambda: package_modules("safebench.evals.backends", helpers=("common",)))


class GenerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: str = "hf"                         # a name in BACKENDS
    temperature: float = Field(1.0, ge=0)       # 0 means greedy
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1)
    k: int = Field(1, ge=1)                     # samples per prompt
    seed: int = 0
    stop: list[str] = []
    template: Literal["plain", "chat"] | None = None   # None: the policy's template
    batch_size: int = Field(32, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"
    # vllm backend: compile the model (auto: on a GPU only; see backends/vllm.py `compiles`)
    vllm_compile: Literal["auto", "on", "off"] = "auto"
    # openai backend: an OpenAI-compatible endpoint serving the model
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    # openai backend: retries of a request that failed to connect or got 408/409/429/5xx,
    # with the openai client's backoff (0.5 s, doubling, at most 8 s, jittered)
    max_retries: int = Field(5, ge=0)

    # Settings of where and how fast the answers are made, not of what they are: left out of
    # the hash, so changing one reuses earlier samples (compiled and eager vLLM gave identical
    # greedy answers: safebench/evals/backends/vllm.py).
    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset({"api_key_env", "vllm_compile", "max_retries"})

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        if name not in BACKENDS:  # a custom error: its message is shown as it is, without "Value error, "
            raise PydanticCustomError("unknown_backend", "unknown backend '{name}'; available: {names}",
                                      {"name": name, "names": ", ".join(BACKENDS)})
        return name

    def settings_hash(self) -> str:
        """Hash of everything that changes what is generated (not where it runs)."""
        return stable_hash(self.model_dump(mode="json", exclude=set(self.EXECUTION_ONLY)))


class Generated(BaseModel):
    response: str
    n_tokens: int


class Backend(Protocol):
    def generate(self, prompts: list[str], seed: int) -> list[Generated]: ...
    def close(self) -> None: ...


def get_backend(name: str, model_dir: str, config: GenerationConfig, template: str) -> Backend:
    return BACKENDS.get(name)(model_dir, config, template)


def truncate_at_stop(text: str, stop: list[str]) -> str:
    cut = len(text)
    for s in stop:
        position = text.find(s)
        if position != -1:
            cut = min(cut, position)
    return text[:cut].strip()


def run_generation(store, gen_key: str, method: str, suite: str, items: list[dict], model_dir: str,
                   config: GenerationConfig, template: str, progress: bool = True) -> int:
    """Generate k samples for every suite item not yet in the database. Returns rows written."""
    from tqdm.auto import tqdm

    done = store.done_sample_keys(gen_key)
    work = [(item, s) for item in items for s in range(config.k)]
    batches = [work[i:i + config.batch_size] for i in range(0, len(work), config.batch_size)]
    todo = [(b, batch) for b, batch in enumerate(batches)
            if not all((item["id"], s) in done for item, s in batch)]
    if not todo:
        return 0
    backend = get_backend(config.backend, model_dir, config, template)
    settings = config.settings_hash()
    written = 0
    bar = tqdm(total=len(work), initial=len(work) - sum(len(b) for _, b in todo),
               desc=f"generate {method}/{suite}", disable=None if progress else True, leave=False, dynamic_ncols=True)
    try:
        for index, batch in todo:
            outputs = backend.generate([item["prompt"] for item, _ in batch], seed=config.seed * 100003 + index)
            rows = [
                {"gen_key": gen_key, "method": method, "suite": suite, "prompt_id": item["id"],
                 "sample_idx": s, "prompt": item["prompt"],
                 "response": truncate_at_stop(out.response, config.stop),
                 "category": item.get("category"), "kind": item.get("kind"),
                 "gen_config_hash": settings, "n_tokens": out.n_tokens}
                for (item, s), out in zip(batch, outputs)
            ]
            store.insert_samples(rows)
            written += len(rows)
            bar.update(len(rows))
    except EndpointFailed as exc:
        # Every finished batch is committed (insert_samples) and a rerun skips it, with the
        # same per-batch seeds, so nothing is lost but the batch in flight.
        kept = len(store.done_sample_keys(gen_key))
        raise EndpointFailed(f"{exc}; {method}/{suite}: the {kept} of {len(work)} samples written so far are "
                             f"kept, rerun the same command to generate the rest") from None
    finally:
        bar.close()
        backend.close()
    return written
