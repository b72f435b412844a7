"""Generation through any OpenAI-compatible endpoint: vLLM's server, TGI, a hosted API.

With the plain template the prompt is formatted here and sent to the completions
endpoint, so the server sees exactly the text the HF and vLLM backends tokenise; with
the chat template the user turn goes to chat completions and the server applies the
model's own chat template. One request per sample, each with its own seed (the same
per-request seeds as the offline vLLM backend), sent a few at a time.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from safebench import modeling
from safebench.errors import EndpointFailed, UsageError
from safebench.evals.backends import common
from safebench.evals.generation import GenerationConfig, Generated

CONCURRENT_REQUESTS = 16
VOLATILE_CARD_FIELDS = ("created", "permission")


def make_client(config: GenerationConfig):
    if not config.base_url:
        raise UsageError("backend 'openai': field 'generation.base_url' is required, "
                         "e.g. --set generation.base_url=http://127.0.0.1:8000/v1")
    try:
        from openai import OpenAI
    except ImportError:
        raise UsageError("backend 'openai': the openai package is not installed (pip install openai)") from None
    # A local server needs no key; the client insists on a non-empty one.
    api_key = os.environ.get(config.api_key_env) or "EMPTY"
    return OpenAI(base_url=config.base_url, api_key=api_key, max_retries=config.max_retries, timeout=600.0)


def describe_endpoint(model: str, config: GenerationConfig) -> dict:
    """The served model's card (id, and for vLLM its root path and context length), checking
    the endpoint answers and serves `model`. Recorded with the generations."""
    import openai

    client = make_client(config)
    try:
        cards = {card.id: card.model_dump() for card in client.models.list()}
    except openai.APIConnectionError as exc:
        raise UsageError(f"backend 'openai': cannot reach generation.base_url={config.base_url!r} ({exc})") from None
    except openai.APIStatusError as exc:
        raise UsageError(f"backend 'openai': {config.base_url} answered {exc.status_code} to /models") from None
    if cards and model not in cards:
        raise UsageError(f"backend 'openai': model {model!r} is not served at {config.base_url}; "
                         f"served: {', '.join(sorted(cards))}")
    card = cards.get(model)
    if card is not None:
        # vLLM stamps `created` (and the permission entries' random ids and times) afresh on
        # every /models call; in the stage key they would give each run a new key, so a rerun
        # after a failure mid-run would start over instead of resuming.
        card = {name: value for name, value in card.items() if name not in VOLATILE_CARD_FIELDS}
    return {"base_url": config.base_url, "model": model, "card": card}


class OpenAIBackend:
    def __init__(self, model: str, config: GenerationConfig, template: str):
        if template not in ("plain", "chat"):
            raise UsageError(f"template {template!r}: expected 'plain' or 'chat'")
        self.model = model
        self.config = config
        self.template = template
        self.client = make_client(config)

    def generate(self, prompts: list[str], seed: int) -> list[Generated]:
        seeds = common.request_seeds(seed, len(prompts))
        with ThreadPoolExecutor(max_workers=min(CONCURRENT_REQUESTS, len(prompts))) as pool:
            return list(pool.map(self.one, prompts, seeds))

    def one(self, prompt: str, seed: int) -> Generated:
        import openai

        sampling = self.config.temperature > 0
        settings = dict(
            model=self.model, max_tokens=self.config.max_new_tokens, seed=seed, n=1,
            temperature=self.config.temperature if sampling else 0.0, top_p=self.config.top_p if sampling else 1.0,
            stop=self.config.stop or None,
        )
        try:
            if self.template == "plain":
                reply = self.client.completions.create(
                    prompt=modeling.format_prompt(None, prompt, "plain"), **settings)
                text = reply.choices[0].text
            else:
                reply = self.client.chat.completions.create(
                    messages=[{"role": "user", "content": prompt}], **settings)
                text = reply.choices[0].message.content or ""
        except openai.BadRequestError as exc:
            # e.g. prompt + max_tokens beyond the served context: the same input would fail again
            raise UsageError(f"backend 'openai': {self.config.base_url} refused the request: {exc.message}") from None
        except openai.APIError as exc:
            # The server died, hung past the timeout or kept answering 5xx through the client's
            # retries (or answered 401/404 mid-run): no answer to record, and the batches already
            # written stay valid, so run_generation stops here and says that a rerun resumes.
            raise EndpointFailed(self.failure(exc)) from None
        n_tokens = reply.usage.completion_tokens if reply.usage else None
        return Generated(response=text.strip(), n_tokens=n_tokens if n_tokens is not None else 0)

    def failure(self, exc: Exception) -> str:
        """One line: the endpoint, what happened, after how many retries. Worded as the judge
        words its failed requests (its classification and key scrubbing, not a second copy)."""
        from safebench.evals.judge.client import describe_failure, is_retryable

        retried = ""
        if is_retryable(exc):  # what the openai client retries (425 aside)
            n = self.config.max_retries
            retried = f" after {n} {'retry' if n == 1 else 'retries'} (generation.max_retries)"
        what = " ".join(describe_failure(exc, self.client.api_key).split())  # server texts may hold newlines
        return (f"backend 'openai': generation.base_url={self.config.base_url!r} failed mid-run{retried}: "
                f"{what[:300]}")

    def close(self) -> None:
        self.client.close()


def make_backend(model: str, config: GenerationConfig, template: str) -> OpenAIBackend:
    return OpenAIBackend(model, config, template)
