"""What every judge protocol produces: requests to send, and how to read the answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from safebench.evals.judge.parsing import Parsed


@dataclass
class JudgeRequest:
    """One call to the judge. `item_id` is unique within a stage and names the judgment."""

    item_id: str
    protocol: str
    template_id: str
    template_hash: str
    messages: list[dict]
    repeat_idx: int
    parse: Callable[[str | None], Parsed]
    structured: dict = field(default_factory=dict)  # extra kwargs for chat.completions.create
    meta: dict[str, Any] = field(default_factory=dict)


def json_schema_format(name: str, properties: dict) -> dict:
    """`response_format` for OpenAI-style structured output (also accepted by vLLM)."""
    return {
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": name,
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": properties,
                    "required": list(properties),
                    "additionalProperties": False,
                },
            },
        }
    }


def choice_format(options: list[str]) -> dict:
    """vLLM's `structured_outputs` extra: the answer is exactly one of the options."""
    return {"extra_body": {"structured_outputs": {"choice": list(options)}}}


def scored_by_method_and_suite(rows: list[dict]):
    """(method, suite, rows of that group, its scored rows), in a stable order: what every
    pointwise protocol summarises; unscored rows are counted by the caller, never scored."""
    from collections import defaultdict

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["suite"])].append(row)
    for (method, suite), group in sorted(groups.items()):
        yield method, suite, group, [r for r in group if r["status"] == "scored"]
