"""Judge prompt templates: evals/judge/NAME.jinja2, identified by name and text hash.

The text hash goes into every cache key, so editing a template can never serve answers
that were given to the old wording.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import jinja2

from safebench import registry
from safebench.errors import UsageError


def templates_dir():
    return registry.project_root() / "evals" / "judge"


@dataclass(frozen=True)
class JudgeTemplate:
    template_id: str
    text_hash: str
    template: jinja2.Template

    def render(self, **variables) -> list[dict]:
        return [{"role": "user", "content": self.template.render(**variables).strip()}]


@lru_cache(maxsize=None)
def load_template(template_id: str) -> JudgeTemplate:
    path = templates_dir() / f"{template_id}.jinja2"
    if not path.exists():
        raise UsageError(f"{path}: judge template '{template_id}' not found")
    text = path.read_text(encoding="utf-8")
    # StrictUndefined: a missing variable is a bug, not an empty slot in the judge prompt.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return JudgeTemplate(template_id, hashlib.sha256(text.encode()).hexdigest()[:16], env.from_string(text))
