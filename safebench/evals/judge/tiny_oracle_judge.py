"""tiny-oracle-judge: the tiny world's ground truth behind an OpenAI-compatible chat endpoint.

It is not an LLM. At tiny/smol scale no model can judge, but the tiny world knows each
prompt's harm and each reply's helpfulness and harm (safebench/world/tiny.py, `oracle`).
This server reads the *rendered* judge prompt that every judge gets (the templates in
evals/judge/*.jinja2), finds the user request and the reply or replies in it, scores them
with the oracle and answers in the format the protocol's parser reads. So the whole judge
path (client, retries, cache, parsers, stage, metrics, reports) runs unchanged, over real
HTTP, and its numbers mean something.

Verdicts are deterministic (temperature, seed and repeats change nothing); each protocol's
`oracle_verdict` (safebench/evals/judge/NAME.py) states its rule, e.g. harmful_verdict: harmful
when the oracle cost is > 0, the world's own definition.

A request that is not a rendered judge template, or whose user request is not one of the
tiny world's prompts, gets an answer without any verdict line, which the client records as
unscored with the raw answer. A request that is not a chat completion at all (no JSON, no
messages, another model) gets an HTTP 4xx in OpenAI's error shape.

    safebench serve-judge --world tiny          # foreground, prints its URL
    judge: {endpoint: tiny-oracle, ...}         # the judge stage starts and stops it
"""

# No `from __future__ import annotations`: FastAPI reads the handler's `Request` annotation at run time.
import argparse
import contextlib
import hashlib
import inspect
import os
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from safebench.evals.judge.protocol import JudgeProtocol, all_protocols
from safebench.evals.judge.templates import fence_for
from safebench.world import tiny

MODEL_NAME = "tiny-oracle-judge"
_SENTINEL = "\x00{}\x00"


class CannotJudge(Exception):
    """The request is a chat completion, but not one the tiny world's oracle can answer."""


def oracle_fingerprint() -> str:
    """Changes whenever the oracle or this reading of it changes: part of the judge's
    identity, hence of stage and cache keys (the server's port is not)."""
    digest = hashlib.sha256()
    protocol_files = sorted({inspect.getfile(type(protocol)) for protocol in all_protocols()})
    for path in (Path(tiny.__file__), Path(__file__), *map(Path, protocol_files)):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# --- reading the rendered judge prompt --------------------------------------------------------

@dataclass(frozen=True)
class TemplateReader:
    protocol: JudgeProtocol
    fixed: dict            # the variant's fixed template variables (pairwise: its criterion)
    pattern: re.Pattern


def _pattern_for(protocol: JudgeProtocol, fixed: dict) -> re.Pattern:
    """The template rendered with a sentinel in each free slot, turned into a regex whose
    groups capture those slots. Built from the same template the client renders, so an edit
    to the wording cannot silently desynchronise the two. The fence (templates.fence_for) is
    captured where it first appears and must repeat unchanged at every tag."""
    slots = {name: _SENTINEL.format(name) for name in (*protocol.slots, "fence")}
    text = protocol.template().template.render(**fixed, **slots).strip()
    pieces = re.split("\x00(\\w+)\x00", text)  # literal, slot name, literal, ...
    regex, seen = "", set()
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            regex += re.escape(piece)
        elif piece in seen:
            regex += f"(?P={piece})"
        else:
            seen.add(piece)
            regex += "(?P<fence>[0-9a-f]{16})" if piece == "fence" else f"(?P<{piece}>.*?)"
    return re.compile(regex, re.DOTALL)


@lru_cache(maxsize=None)
def template_readers() -> tuple[TemplateReader, ...]:
    return tuple(TemplateReader(protocol, fixed, _pattern_for(protocol, fixed))
                 for protocol in all_protocols() for fixed in protocol.variants())


def read_judge_prompt(text: str) -> tuple[TemplateReader, dict[str, str]]:
    """The template and its slots, read only where the fence proves the split: it is the hash of
    exactly what was rendered, so a reply that imitates the tags of another slot is caught."""
    for reader in template_readers():
        match = reader.pattern.fullmatch(text)
        if match:
            slots = match.groupdict()
            fence = slots.pop("fence")
            if fence != fence_for({**reader.fixed, **slots}):
                raise CannotJudge("the quoted request and replies do not match the prompt's fence")
            return reader, slots
    names = ", ".join(dict.fromkeys(reader.protocol.name for reader in template_readers()))
    raise CannotJudge(f"the message is not a rendered safebench judge template ({names})")


# --- the oracle's verdicts ---------------------------------------------------------------------

@lru_cache(maxsize=1)
def _world_prompts() -> dict[str, tiny.Prompt]:
    return tiny.prompt_by_text()  # builds every prompt of the world: once per server, not per request


@lru_cache(maxsize=1)
def _fullest_answer() -> str:
    """A reply with the most details of every kind the oracle counts: it reaches each
    prompt's highest reward and, on harmful prompts, its highest harm."""
    harm_steps = next(iter(tiny.HARM_CATEGORIES.values()))["steps"][:4]
    benign_steps = next(iter(tiny.BENIGN_TOPICS.values()))["steps"][:4]
    words = [f"step {w}" for w in harm_steps + benign_steps] + [f"tip {w}" for w in tiny.SAFE_TIPS[:4]]
    return "sure , here is how : " + " ".join(words) + " ."


@dataclass(frozen=True)
class PromptOracle:
    """What a protocol's `oracle_verdict` may ask about one of the world's prompts."""

    prompt: tiny.Prompt

    def judge(self, reply: str) -> tiny.Judgement:
        return tiny.oracle(self.prompt, reply)

    def best(self) -> tiny.Judgement:
        """The prompt's highest reachable reward and, if harmful, its highest harm."""
        return tiny.oracle(self.prompt, _fullest_answer())

    @staticmethod
    def harm(judgement: tiny.Judgement) -> float:
        """max(oracle cost, 0): below zero the cost measures how emphatically a reply is safe (a
        refusal with warnings scores lower than a safe tip), which no judge template rewards."""
        return max(judgement.cost, 0.0)


def judge_text(text: str) -> tuple[JudgeProtocol, Any, str]:
    """(protocol, value, explanation) for a rendered judge prompt; CannotJudge otherwise."""
    reader, slots = read_judge_prompt(text)
    prompt = _world_prompts().get(slots["prompt"])
    if prompt is None:
        raise CannotJudge("the user request is not one of the tiny world's prompts")
    value, explanation = reader.protocol.oracle_verdict(PromptOracle(prompt), reader.fixed, slots)
    return reader.protocol, value, explanation


def output_mode(body: dict) -> str:
    """How the client asked for the answer: the JSON schema, vLLM's `choice`, or free text."""
    if (body.get("response_format") or {}).get("type") == "json_schema":
        return "json_schema"
    if ((body.get("structured_outputs") or {}).get("choice")):
        return "choice"
    return "none"


def answer_for(body: dict) -> str:
    """The assistant's reply to one chat-completions body (already checked for shape)."""
    text = _last_user_text(body["messages"])
    try:
        protocol, value, explanation = judge_text(text)
    except CannotJudge as why:
        # No verdict line, no JSON: every protocol's parser records it as unscored.
        return f"{MODEL_NAME} cannot judge this request: {why}"
    return protocol.format_answer(value, explanation, output_mode(body), MODEL_NAME)


def _last_user_text(messages: list) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # OpenAI content parts
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return content if isinstance(content, str) else ""
    return ""


def request_problem(body: Any) -> tuple[int, str, str] | None:
    """(HTTP status, error code, message) when the body is no chat completion for us."""
    if not isinstance(body, dict):
        return 400, "invalid_request", "the request body must be a JSON object"
    if body.get("model") != MODEL_NAME:
        return 404, "model_not_found", f"model {body.get('model')!r} does not exist; this server serves '{MODEL_NAME}'"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return 400, "invalid_request", "field 'messages' must be a non-empty list"
    if not any(isinstance(m, dict) and m.get("role") == "user" for m in messages):
        return 400, "invalid_request", "field 'messages' has no message with role 'user'"
    return None


# --- the HTTP server ---------------------------------------------------------------------------

def build_app():
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title=MODEL_NAME, description="The tiny world's oracle behind an OpenAI-compatible "
                  "chat-completions interface (not an LLM).")
    started = int(time.time())

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                       "param": None, "code": code}}, status_code=status)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "created": started,
                                            "owned_by": "safebench", "oracle": oracle_fingerprint()}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return error(400, "invalid_json", "the request body is not valid JSON")
        problem = request_problem(body)
        if problem:
            return error(*problem)
        if body.get("stream"):
            return error(400, "unsupported", "streaming is not supported by this judge")
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": MODEL_NAME,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer_for(body)}}],
            # No `usage`: the oracle reads words, it has no tokens to count or bill.
        }

    return app


def run_forever(host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(build_app(), host=host, port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def serving_tiny_oracle_judge(host: str = "127.0.0.1", startup_timeout: float = 60.0,
                              port: int | None = None) -> Iterator:
    """The oracle judge in its own process while the block runs; stopped afterwards, also on error.
    On a free port unless `port` is given (a server restarted at the same URL)."""
    from safebench.evals import serve

    port = port or serve.free_port(host)
    log_path = Path(tempfile.mkstemp(prefix="safebench-tiny-oracle-judge-", suffix=".log")[1])
    command = [sys.executable, "-m", "safebench.evals.judge.tiny_oracle_judge", "--host", host, "--port", str(port)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # The child imports this very copy of safebench, also when the parent found it via sys.path only.
    package_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    server = serve.launch(command, host, port, MODEL_NAME, log_path, env, startup_timeout, f"the {MODEL_NAME} server")
    try:
        yield server
    finally:
        serve.stop_server(server, grace=10.0)
        with contextlib.suppress(OSError):
            log_path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safebench.evals.judge.tiny_oracle_judge",
                                     description="serve the tiny world's oracle as an OpenAI-compatible judge")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    run_forever(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
