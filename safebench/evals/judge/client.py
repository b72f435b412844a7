"""Sending judge requests: openai client, retries, bounded concurrency, cost, budget.

Retries are tenacity's (exponential backoff with jitter), not the openai client's own, so
that a server's `Retry-After` is honoured and every retry and wait shows on the progress
bar: a run that is backing off says so instead of looking stuck.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import openai
import tenacity
from tqdm import tqdm

from safebench.evals.judge.cache import JudgeCache, cache_key
from safebench.evals.judge.config import JudgeConfig
from safebench.evals.judge.protocol import JudgeRequest

RETRYABLE_STATUS = {408, 409, 425, 429}


class EmptyAnswer(Exception):
    """The server answered 200 with no text: worth asking again, never worth caching."""


@dataclass
class Outcome:
    request: JudgeRequest
    status: str  # scored | unparsed | error | not_judged
    value: Any = None
    raw_answer: str | None = None
    reason: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    from_cache: bool = False
    attempts: int = 0
    cache_key: str = ""


@dataclass
class RunStats:
    total: int = 0
    http_calls: int = 0        # attempts that went over the wire, retries included
    retries: int = 0
    from_cache: int = 0
    scored: int = 0
    unparsed: int = 0
    errors: int = 0
    not_judged: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0      # new spending in this run (cache hits cost nothing)
    budget_stopped: bool = False
    seconds: float = 0.0
    error_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def is_retryable(exc: BaseException) -> bool:
    """A failure that asking again may cure (the server's side or the wire, not the request).
    Also how the openai generation backend words a failure mid-run."""
    if isinstance(exc, (openai.APIConnectionError, EmptyAnswer, openai.APIResponseValidationError,
                        json.JSONDecodeError)):
        return True  # timeouts, dropped connections, empty or unreadable bodies
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
    return False


def retry_after_seconds(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (Retry-After: seconds or HTTP date; retry-after-ms)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class WaitRetryAfterOrBackoff(tenacity.wait.wait_base):
    """The server's Retry-After when it gives one, else exponential backoff with jitter."""

    def __init__(self, initial: float, maximum: float):
        self.backoff = tenacity.wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)
        self.maximum = maximum

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = retry_after_seconds(exc)
        if asked is not None:
            return min(asked, self.maximum)
        return self.backoff(retry_state)


def scrub(text: str, secret: str | None) -> str:
    """Error texts can echo the key (some APIs print part of it): remove it before storing."""
    if secret:
        text = text.replace(secret, "***")
    return re.sub(r"sk-[A-Za-z0-9_\-*]{4,}", "sk-***", text)


def describe_failure(exc: BaseException, secret: str | None) -> str:
    """A failed request as recorded and shown (judge verdict rows, the openai generation
    backend's error line): the exception's type and text, without the API key."""
    return scrub(f"{type(exc).__name__}: {exc}", secret)


class JudgeClient:
    def __init__(self, config: JudgeConfig, cache: JudgeCache, *, show_progress: bool = True):
        self.config = config
        self.cache = cache
        self.identity = config.identity()
        self.backoff_initial = config.backoff_initial
        self.show_progress = show_progress

    def key_for(self, request: JudgeRequest) -> str:
        return cache_key(self.identity, request.template_id, request.template_hash,
                         request.messages, request.structured, request.repeat_idx)

    def cost_of(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        price = self.config.price()
        if price is None:
            return None
        return ((prompt_tokens or 0) * price.input + (completion_tokens or 0) * price.output) / 1e6

    def run(self, requests: list[JudgeRequest], on_outcome: Callable[[Outcome], None]) -> RunStats:
        """Judge every request; `on_outcome` is called once per request, as results arrive."""
        return asyncio.run(_JudgeRun(self, requests, on_outcome).run())


class _JudgeRun:
    """One `JudgeClient.run`: its progress bar, counts and budget, over all its requests."""

    def __init__(self, client: JudgeClient, requests: list[JudgeRequest], on_outcome: Callable[[Outcome], None]):
        self.client, self.config = client, client.config
        self.requests, self.on_outcome = requests, on_outcome
        self.stats = RunStats(total=len(requests))
        self.keys = {id(r): client.key_for(r) for r in requests}
        self.waiting = self.in_flight = 0
        self.per_call_estimate: float | None = None  # mean cost of finished calls, to hold back budget
        self.bar = tqdm(total=len(requests), desc=f"judge {self.config.model}", unit="judgment",
                        disable=not client.show_progress, dynamic_ncols=True)

    async def run(self) -> RunStats:
        started = time.monotonic()
        try:
            pending = self.answer_from_cache()
            if pending:
                await self.ask(pending)
        finally:
            self.bar.close()
        self.stats.seconds = time.monotonic() - started
        return self.stats

    # --- outcomes ------------------------------------------------------------------------
    def refresh(self) -> None:
        s = self.stats
        self.bar.set_postfix(cached=s.from_cache, retries=s.retries, waiting=self.waiting, errors=s.errors,
                             unscored=s.unparsed, cost=f"${s.cost_usd:.4f}", refresh=False)

    def finish(self, outcome: Outcome) -> None:
        if outcome.status == "scored":
            self.stats.scored += 1
        elif outcome.status == "unparsed":
            self.stats.unparsed += 1
        elif outcome.status == "error":
            self.stats.errors += 1
            reason = outcome.reason[:80]
            self.stats.error_reasons[reason] = self.stats.error_reasons.get(reason, 0) + 1
        else:
            self.stats.not_judged += 1
        self.on_outcome(outcome)
        self.refresh()
        self.bar.update(1)

    def read(self, request: JudgeRequest, answer: str, **usage) -> Outcome:
        parsed = request.parse(answer)
        return Outcome(request, "scored" if parsed.ok else "unparsed", value=parsed.value,
                       raw_answer=answer, reason=parsed.reason, cache_key=self.keys[id(request)], **usage)

    def answer_from_cache(self) -> list[JudgeRequest]:
        """Finish every cached request, in one pass (a fully cached rerun makes no HTTP call at
        all); returns the others."""
        cached = self.client.cache.get_many(self.keys.values())
        pending = []
        for request in self.requests:
            hit = cached.get(self.keys[id(request)])
            if hit is None:
                pending.append(request)
                continue
            self.stats.from_cache += 1
            self.finish(self.read(request, hit["answer"], prompt_tokens=hit["prompt_tokens"],
                                  completion_tokens=hit["completion_tokens"], cost_usd=hit["cost_usd"],
                                  from_cache=True))
        return pending

    # --- asking --------------------------------------------------------------------------
    async def ask(self, pending: list[JudgeRequest]) -> None:
        """Ask for every pending request, at most `concurrency` at a time."""
        self.api = openai.AsyncOpenAI(base_url=self.config.base_url, api_key=self.config.api_key(),
                                      max_retries=0, timeout=self.config.timeout)
        self.semaphore = asyncio.Semaphore(self.config.concurrency)
        ticker = asyncio.create_task(self.heartbeat())
        try:
            await asyncio.gather(*(self.judge_one(r) for r in pending))
        finally:
            ticker.cancel()
            await self.api.close()

    async def heartbeat(self) -> None:
        while True:  # keeps the elapsed time and the waiting count moving on screen
            await asyncio.sleep(1.0)
            self.refresh()
            self.bar.refresh()

    def over_budget(self) -> bool:
        if self.config.max_cost is None or self.config.price() is None:
            return False
        estimate = self.per_call_estimate or 0.0
        return self.stats.cost_usd + estimate * (self.in_flight + 1) > self.config.max_cost

    async def judge_one(self, request: JudgeRequest) -> None:
        async with self.semaphore:
            if self.over_budget():
                self.stats.budget_stopped = True
                self.finish(Outcome(request, "not_judged", reason="judge budget (max_cost) reached",
                                    cache_key=self.keys[id(request)]))
                return
            self.in_flight += 1
            retrying = self.retrying()
            try:
                response = await retrying(self.call_once, request)
            except Exception as exc:  # every failure ends as a recorded error, never a score
                self.finish(Outcome(request, "error", reason=describe_failure(exc, self.api.api_key)[:500],
                                    attempts=retrying.statistics.get("attempt_number", 1),
                                    cache_key=self.keys[id(request)]))
                return
            finally:
                self.in_flight -= 1
            self.finish(self.answered(request, response, retrying.statistics.get("attempt_number", 1)))

    def retrying(self) -> tenacity.AsyncRetrying:
        def note_retry(retry_state: tenacity.RetryCallState) -> None:
            self.stats.retries += 1

        return tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.config.max_retries + 1),
            wait=WaitRetryAfterOrBackoff(self.client.backoff_initial, self.config.max_retry_wait),
            retry=tenacity.retry_if_exception(is_retryable),
            before_sleep=note_retry, sleep=self.sleep_visibly, reraise=True)

    async def sleep_visibly(self, seconds: float) -> None:
        self.waiting += 1
        self.refresh()
        self.bar.refresh()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.waiting -= 1

    async def call_once(self, request: JudgeRequest):
        self.stats.http_calls += 1
        response = await self.api.chat.completions.create(
            model=self.config.model, messages=request.messages,
            temperature=self.config.temperature, seed=self.config.seed + request.repeat_idx,
            max_tokens=self.config.max_tokens, **request.structured)
        if not response.choices or not (response.choices[0].message.content or "").strip():
            raise EmptyAnswer("the judge returned an empty answer")
        return response

    def answered(self, request: JudgeRequest, response, attempts: int) -> Outcome:
        """Count the answer's tokens and cost, cache it, and read it."""
        answer = response.choices[0].message.content
        usage = response.usage
        pt = usage.prompt_tokens if usage else None
        ct = usage.completion_tokens if usage else None
        cost = self.client.cost_of(pt, ct)
        self.stats.prompt_tokens += pt or 0
        self.stats.completion_tokens += ct or 0
        if cost is not None:
            self.stats.cost_usd += cost
            done = self.stats.scored + self.stats.unparsed + 1 - self.stats.from_cache
            self.per_call_estimate = self.stats.cost_usd / max(done, 1)
        self.client.cache.put(self.keys[id(request)], self.config.model, request.template_id, answer, pt, ct, cost)
        return self.read(request, answer, prompt_tokens=pt, completion_tokens=ct, cost_usd=cost, attempts=attempts)
