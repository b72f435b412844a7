"""The judge protocol interface, and the registry of protocols.

A protocol is one way of asking a judge: `safebench/evals/judge/NAME.py` defines
`PROTOCOL = SomeProtocol()` and `evals/judge/NAME.jinja2` its prompt. The templates name the
protocols (`PROTOCOLS`, no import), so config validation, `safebench list protocols` and
the CLI list them without loading anything; the stage, the metrics and the tiny oracle judge
ask the protocol object and know no protocol by name.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

from safebench.evals.judge.parsing import Parsed, parse_choice
from safebench.evals.judge.templates import JudgeTemplate, load_template, templates_dir
from safebench.registry import Plugins


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


@dataclass(frozen=True)
class Verdict:
    """One judged quantity of a scored judgment, as the reports read it: `value` on the
    criterion's scale, `opponent` the method compared with (None for a pointwise score)."""

    criterion: str
    value: float | None
    opponent: str | None = None


class JudgeProtocol:
    """What the judge stage, the metrics and the tiny oracle judge need from a protocol."""

    name: ClassVar[str]
    # Template variables filled from the samples (the oracle judge reads them back).
    slots: ClassVar[tuple[str, ...]] = ("prompt", "response")

    def template(self) -> JudgeTemplate:
        return load_template(self.name)

    def variants(self) -> list[dict]:
        """Every set of fixed template variables a request may be rendered with (the oracle judge
        builds one reader per variant)."""
        return [{}]

    def requests(self, evaluations: list[dict], samples: dict[str, list[dict]], config) -> tuple[list[JudgeRequest], list[str]]:
        """The judgments to ask for `evaluations` (manifest entries; `samples` by gen_key) under a
        JudgeConfig, and notes on samples that could not be asked about."""
        raise NotImplementedError

    def planned_requests(self, samples_per_method: int, methods: list[str], config) -> int:
        """How many requests `requests` makes, before repeats, for this many samples of each method:
        the dry run's count (safebench/plan.py), made before any sample exists."""
        return samples_per_method * len(methods)

    def parse(self, answer: str | None) -> Parsed:
        raise NotImplementedError

    def structured(self, mode: str) -> dict:
        """Extra request arguments for `judge.structured_output` = mode."""
        raise NotImplementedError

    def summarize(self, rows: list[dict], config) -> list[dict]:
        """judge_metrics entries (protocol, method, suite, criterion, numbers) from judgment rows."""
        raise NotImplementedError

    def verdicts(self, row: dict, value: Any) -> list[Verdict]:
        """The judged quantities of one judgment row (`value`: its parsed value, None if unscored)."""
        raise NotImplementedError

    def oracle_verdict(self, oracle, fixed: dict, slots: dict[str, str]) -> tuple[Any, str]:
        """The tiny world's verdict (value, explanation) for a rendered request; `oracle` is the
        tiny oracle judge's view of one prompt (tiny_oracle_judge.PromptOracle)."""
        raise NotImplementedError

    def format_answer(self, value: Any, explanation: str, mode: str, model: str) -> str:
        """An answer carrying `value` in the shape `parse` reads for output mode `mode`."""
        raise NotImplementedError

    # --- shared by the protocols ---------------------------------------------------------
    def request(self, item_id: str, repeat_idx: int, messages: list[dict], mode: str, meta: dict) -> JudgeRequest:
        template = self.template()
        return JudgeRequest(item_id=item_id, protocol=self.name, template_id=template.template_id,
                            template_hash=template.text_hash, messages=messages, repeat_idx=repeat_idx,
                            parse=self.parse, structured=self.structured(mode), meta=meta)


class ChoiceProtocol(JudgeProtocol):
    """A verdict that is one of a few options, read from `LABEL: option`."""

    label: ClassVar[str]
    options: ClassVar[tuple[str, ...]]

    def parse(self, answer: str | None) -> Parsed:
        return parse_choice(answer, self.label, self.options)

    def structured(self, mode: str) -> dict:
        if mode == "json_schema":
            return json_schema_format(self.name, {self.label: {"type": "string", "enum": list(self.options)}})
        if mode == "choice":
            return choice_format(list(self.options))
        return {}

    def format_answer(self, value: Any, explanation: str, mode: str, model: str) -> str:
        if mode == "json_schema":
            return json.dumps({self.label: value})
        if mode == "choice":
            return value
        return f"{model}: {explanation}.\n{self.label.capitalize()}: {value}"


class PointwiseProtocol(JudgeProtocol):
    """One judgment per (sample, repeat) of every evaluation, on the prompt and its reply."""

    criterion: ClassVar[str]

    def requests(self, evaluations: list[dict], samples: dict[str, list[dict]], config) -> tuple[list[JudgeRequest], list[str]]:
        out = []
        for evaluation in evaluations:
            gen_key = evaluation["gen_key"]
            for s in samples[gen_key]:
                messages = self.template().render(prompt=s["prompt"], response=s["response"])
                meta = {"gen_key": gen_key, "method": evaluation["method"], "suite": s["suite"],
                        "prompt_id": s["prompt_id"], "sample_idx": s["sample_idx"],
                        "criterion": self.criterion, "order": "-"}
                for r in range(config.repeats):
                    item_id = f"{self.name}|{gen_key}|{s['prompt_id']}|{s['sample_idx']}|r{r}"
                    out.append(self.request(item_id, r, messages, config.structured_output, meta))
        return out, []


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


def scored_by_method_and_suite(rows: list[dict]) -> Iterator[tuple[str, str, list[dict], list[dict]]]:
    """(method, suite, rows of that group, its scored rows), in a stable order: what every
    pointwise protocol summarises; unscored rows are counted by the caller, never scored."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["suite"])].append(row)
    for (method, suite), group in sorted(groups.items()):
        yield method, suite, group, [r for r in group if r["status"] == "scored"]


# --- the registry --------------------------------------------------------------------------------

def _template_names() -> list[str]:
    return [p.stem for p in templates_dir().glob("*.jinja2")]


# A protocol NAME is evals/judge/NAME.jinja2 plus `PROTOCOL` in safebench/evals/judge/NAME.py.
PROTOCOLS = Plugins("judge protocol", "safebench.evals.judge", "PROTOCOL", _template_names)


def protocol_names() -> list[str]:
    return PROTOCOLS.names()


def get_protocol(name: str) -> JudgeProtocol:
    return PROTOCOLS.get(name)


def all_protocols() -> list[JudgeProtocol]:
    return [get_protocol(name) for name in protocol_names()]
