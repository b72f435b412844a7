"""Judge prompt templates: evals/judge/NAME.jinja2, identified by name and text hash.

The text hash goes into every cache key, so editing a template can never serve answers
that were given to the old wording.
"""

from __future__ import annotations

import hashlib
import json
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
        return [{"role": "user", "content": self.template.render(fence=fence_for(variables), **variables).strip()}]


def fence_for(variables: dict) -> str:
    """The token that ends the tags quoting a request and its replies in a judge prompt: a hash of
    everything rendered into the prompt. A reply cannot contain the token that closes its own tag,
    since the token depends on the reply; and the same request always renders the same prompt,
    so cache keys stay stable."""
    return hashlib.sha256(json.dumps(variables, sort_keys=True, default=str).encode()).hexdigest()[:16]


@lru_cache(maxsize=None)
def load_template(template_id: str) -> JudgeTemplate:
    path = templates_dir() / f"{template_id}.jinja2"
    if not path.exists():
        raise UsageError(f"{path}: judge template '{template_id}' not found")
    text = path.read_text(encoding="utf-8")
    # StrictUndefined: a missing variable is a bug, not an empty slot in the judge prompt.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return JudgeTemplate(template_id, hashlib.sha256(text.encode()).hexdigest()[:16], env.from_string(text))
