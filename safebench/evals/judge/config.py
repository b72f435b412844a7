"""JudgeConfig: everything that decides what a judge says, validated up front.

The judge model id is pinned here (no "gpt-4" aliases that drift) and recorded with every
verdict. The API key itself is never part of the config: only the *name* of the
environment variable that holds it, so the config can be written to the run directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from safebench.errors import UsageError
from safebench.evals.judge.pairwise import CRITERIA as PAIRWISE_CRITERIA
from safebench.evals.judge.protocol import protocol_names
from safebench.evals.judge.tiny_oracle_judge import MODEL_NAME as TINY_ORACLE_MODEL
from safebench.evals.judge.tiny_oracle_judge import oracle_fingerprint

# The endpoint that makes the judge stage run the tiny world's oracle judge (tiny_oracle_judge.py).
TINY_ORACLE_ENDPOINT = "tiny-oracle"
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class Price(BaseModel):
    """Dollars per one million tokens."""

    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0)
    output: float = Field(ge=0)


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # "url": the judge at base_url. "tiny-oracle": the tiny world's ground truth behind the same
    # OpenAI interface (safebench/evals/judge/tiny_oracle_judge.py, not an LLM); the judge stage
    # starts it on a loopback port of its own for its duration: base_url is null (not used, and
    # so not recorded as if it were).
    endpoint: Literal["url", "tiny-oracle"] = "url"
    base_url: str | None = DEFAULT_BASE_URL
    # Pinned snapshot, as SACPO did; an alias such as "gpt-4" changes under the run.
    model: str = "gpt-4-0125-preview"
    api_key_env: str = "OPENAI_API_KEY"
    # SACPO and Safe RLHF both sampled at 0.7; the seed makes repeats reproducible where
    # the endpoint honours it (repeat r uses seed + r, so repeats are distinct samples).
    temperature: float = Field(0.7, ge=0, le=2)
    seed: int = 0
    max_tokens: int = Field(256, ge=1)
    concurrency: int = Field(8, ge=1, le=256)
    max_retries: int = Field(6, ge=0)
    timeout: float = Field(60.0, gt=0)
    # Upper bound on one backoff wait, also on a server's Retry-After.
    max_retry_wait: float = Field(60.0, gt=0)
    backoff_initial: float = Field(1.0, gt=0)  # first backoff wait; doubles per retry, plus jitter
    prices: dict[str, Price] = {
        # Published list prices (openai.com/pricing), $ per 1M tokens.
        "gpt-4-0125-preview": Price(input=10.0, output=30.0),
        "gpt-4o-2024-08-06": Price(input=2.5, output=10.0),
        "gpt-4o-mini-2024-07-18": Price(input=0.15, output=0.6),
    }
    max_cost: float | None = Field(None, ge=0)
    repeats: int = Field(3, ge=1)
    protocols: list[str] = ["harmful_verdict"]  # names of evals/judge/NAME.jinja2 + safebench/evals/judge/NAME.py
    pairwise_criteria: list[Literal[PAIRWISE_CRITERIA]] = list(PAIRWISE_CRITERIA)
    # none: free text + parser. json_schema: `response_format` (OpenAI and vLLM).
    # choice: vLLM's `structured_outputs` extra (single-token labels only on odd tokenizers).
    structured_output: Literal["none", "json_schema", "choice"] = "json_schema"
    cache_path: str | None = None  # default: $SAFEBENCH_CACHE_DIR or ~/.cache/safebench
    elo_seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _oracle_judge_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("endpoint") == TINY_ORACLE_ENDPOINT:
            # Any base_url given (e.g. a recorded config holding the default) is dropped:
            # the oracle judge is always the server the stage starts itself.
            return {"model": TINY_ORACLE_MODEL, **data, "base_url": None}
        return data

    @field_validator("protocols")
    @classmethod
    def _known_protocols(cls, protocols: list[str]) -> list[str]:
        unknown = [p for p in protocols if p not in protocol_names()]
        if unknown:
            raise ValueError(f"unknown judge protocol '{unknown[0]}'; available: {', '.join(protocol_names())}")
        return protocols

    @model_validator(mode="after")
    def _budget_needs_price(self) -> "JudgeConfig":
        if self.max_cost is not None and self.model not in self.prices:
            raise ValueError(
                f"max_cost is set but prices has no entry for model '{self.model}'; "
                "add prices.<model>.input/output ($ per 1M tokens)"
            )
        if not self.protocols:
            raise ValueError("protocols is empty; choose from " + ", ".join(protocol_names()))
        if self.endpoint != TINY_ORACLE_ENDPOINT and not self.base_url:
            raise ValueError(f"field 'judge.base_url' = {self.base_url!r}: endpoint 'url' needs the judge's URL, "
                             f"e.g. {DEFAULT_BASE_URL}")
        if self.endpoint == TINY_ORACLE_ENDPOINT and self.model != TINY_ORACLE_MODEL:
            raise ValueError(f"field 'judge.model' = {self.model!r}: endpoint '{TINY_ORACLE_ENDPOINT}' "
                             f"serves only '{TINY_ORACLE_MODEL}'")
        return self

    # --- derived ----------------------------------------------------------------------
    def price(self) -> Price | None:
        return self.prices.get(self.model)

    def resolved_cache_path(self) -> Path:
        if self.cache_path:
            return Path(self.cache_path).expanduser()
        root = os.environ.get("SAFEBENCH_CACHE_DIR") or Path.home() / ".cache" / "safebench"
        return Path(root) / "judge_cache.sqlite"

    def is_local(self) -> bool:
        return urlparse(self.base_url).hostname in ("127.0.0.1", "localhost", "::1")

    def api_key(self) -> str:
        """Read the key from the environment at call time; it is never stored."""
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if self.is_local():
            # A local vLLM server accepts any key; the client library refuses an empty one.
            return "local-no-key"
        raise UsageError(
            f"judge.api_key_env: environment variable {self.api_key_env} is not set "
            f"(needed for {self.base_url})"
        )

    def recorded(self) -> dict[str, Any]:
        """What the run records about the judge: the config minus anything secret."""
        return self.model_dump(mode="json")

    def identity(self) -> dict[str, Any]:
        """The fields that change a verdict (concurrency, retries, budget do not)."""
        if self.endpoint == TINY_ORACLE_ENDPOINT:
            # Deterministic: no sampling settings; its port changes every start, its oracle does not.
            return {"endpoint": self.endpoint, "model": self.model, "oracle": oracle_fingerprint(),
                    "structured_output": self.structured_output}
        return {
            "base_url": self.base_url.rstrip("/"),
            "model": self.model,
            "temperature": self.temperature,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "structured_output": self.structured_output,
        }


def parse_judge_config(data: dict | None, source: str = "judge") -> JudgeConfig:
    """Validate a judge config dict; a bad field becomes one UsageError line naming it."""
    try:
        return JudgeConfig.model_validate(data or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        dotted = ".".join(str(p) for p in ("judge", *err["loc"]))
        if err["type"] == "extra_forbidden":
            raise UsageError(f"{source}: unknown field '{dotted}'") from None
        if err["type"] == "missing":
            raise UsageError(f"{source}: field '{dotted}' is required") from None
        message = err["msg"].removeprefix("Value error, ")
        if err["loc"]:
            raise UsageError(f"{source}: field '{dotted}' = {err.get('input')!r}: {message}") from None
        raise UsageError(f"{source}: judge: {message}") from None
