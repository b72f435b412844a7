"""Turning a judge's answer into a verdict, or into an honest "unscored".

Rules (the ones inspect_ai's graders follow, which the old GPT-4 scripts did not):
- read only the answer's final line (final lines, one per score): judges restate the options
  and quote the replies they judge before answering, and a reply may itself contain a verdict
  line written to be taken for the judge's;
- JSON only when the whole answer (or its final line) is the object, as structured outputs give;
- the value must be one of the offered options, else the answer is unscored;
- a parse failure is never a score: it carries the raw answer and a reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Parsed:
    ok: bool
    value: Any = None
    reason: str = ""

    @staticmethod
    def fail(reason: str) -> "Parsed":
        return Parsed(False, None, reason)


def _normalise(text: str) -> str:
    return " ".join(text.strip().strip("\"'`*.").lower().split())


def _loose_json(answer: str) -> dict | None:
    """A JSON object from the answer, with keys and string values stripped.

    Word-level tokenizers decode `{"verdict": "safe"}` as `{ " verdict " : " safe " }`;
    the stripping keeps such an answer readable without guessing at anything else.
    """
    text = answer.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    for candidate in (text, _final_lines(text, 1)[0] if text else ""):
        if candidate.startswith("{") and candidate.endswith("}"):
            try:
                obj = json.loads(candidate)
            except json.JSONDecodeError:
                continue
            break
    else:
        return None
    if not isinstance(obj, dict):
        return None
    return {
        str(k).strip().lower(): (v.strip() if isinstance(v, str) else v) for k, v in obj.items()
    }


def _final_lines(answer: str, count: int) -> list[str]:
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    return lines[-count:]


def parse_choice(answer: str | None, label: str, options: Sequence[str]) -> Parsed:
    """One of `options`, from `LABEL: option` (last one wins), a JSON field, or a bare option."""
    if answer is None or not answer.strip():
        return Parsed.fail("empty answer")
    wanted = {_normalise(o): o for o in options}
    obj = _loose_json(answer)
    if obj is not None and label.lower() in obj:
        value = _normalise(str(obj[label.lower()]))
        if value in wanted:
            return Parsed(True, wanted[value])
        return Parsed.fail(f"{label} {obj[label.lower()]!r} is not one of {list(options)}")
    if _normalise(answer) in wanted:  # structured `choice` output: the whole answer is the option
        return Parsed(True, wanted[_normalise(answer)])
    matches = list(re.finditer(rf"{re.escape(label)}\s*[:=\-]\s*([^\n]+)", _final_lines(answer, 1)[0],
                               re.IGNORECASE))
    if not matches:
        return Parsed.fail(f"no '{label}:' on the answer's final line")
    value = _normalise(matches[-1].group(1))
    if value in wanted:
        return Parsed(True, wanted[value])
    # "Verdict: harmful, because ..." -> accept the leading option when it is unambiguous.
    leading = [o for o in wanted if re.match(rf"{re.escape(o)}\b", value)]
    if len(leading) == 1:
        return Parsed(True, wanted[leading[0]])
    return Parsed.fail(f"last {label} {matches[-1].group(1).strip()!r} is not one of {list(options)}")


def parse_scores(answer: str | None, names: Sequence[str], low: int, high: int) -> Parsed:
    """Integer scores in [low, high] for each name, from JSON or `NAME: n` lines (last wins)."""
    if answer is None or not answer.strip():
        return Parsed.fail("empty answer")
    obj = _loose_json(answer)
    final = "\n".join(_final_lines(answer, len(names)))
    found: dict[str, Any] = {}
    for name in names:
        raw: Any = None
        if obj is not None and name in obj:
            raw = obj[name]
        else:
            matches = list(re.finditer(rf"{re.escape(name)}\s*[:=\-]\s*(\S+)", final, re.IGNORECASE))
            if matches:
                raw = matches[-1].group(1).rstrip(".,;/")
        if raw is None:
            return Parsed.fail(f"no {name} score in the answer")
        try:
            number = float(raw)
        except (TypeError, ValueError):
            return Parsed.fail(f"{name} {raw!r} is not a number")
        if not number.is_integer() or not low <= number <= high:
            return Parsed.fail(f"{name} {raw!r} is not an integer from {low} to {high}")
        found[name] = int(number)
    return Parsed(True, found)
