"""SQLite cache of judge answers, written as each answer arrives.

Key: hash of (base URL, model, template id + text hash, sampling parameters, structured
output request, rendered input, repeat index). The repeat index makes sampled repeats
distinct entries, so a cached rerun replays the same spread of verdicts instead of one
answer three times. Errors and empty answers are never stored: a rerun asks again.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable

from safebench.hashing import stable_hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS judge_cache (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, template_id TEXT NOT NULL,
    answer TEXT NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER,
    cost_usd REAL, created_at REAL NOT NULL
);
"""


def cache_key(identity: dict, template_id: str, template_hash: str, messages: list[dict],
              structured: dict, repeat_idx: int) -> str:
    return stable_hash({
        "judge": identity, "template": [template_id, template_hash], "messages": messages,
        "structured": structured, "repeat": repeat_idx,
    }, length=40)


class JudgeCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        keys = list(keys)
        found: dict[str, dict] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, answer, pt, ct, cost in self.db.execute(
                f"SELECT key, answer, prompt_tokens, completion_tokens, cost_usd FROM judge_cache "
                f"WHERE key IN ({marks})", chunk):
                found[key] = {"answer": answer, "prompt_tokens": pt, "completion_tokens": ct,
                              "cost_usd": cost}
        return found

    def put(self, key: str, model: str, template_id: str, answer: str, prompt_tokens: int | None,
            completion_tokens: int | None, cost_usd: float | None) -> None:
        if not answer or not answer.strip():
            raise ValueError("empty judge answers are never cached")
        self.db.execute(
            "INSERT OR REPLACE INTO judge_cache(key, model, template_id, answer, prompt_tokens, "
            "completion_tokens, cost_usd, created_at) VALUES (?,?,?,?,?,?,?,?)",
            (key, model, template_id, answer, prompt_tokens, completion_tokens, cost_usd, time.time()),
        )

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM judge_cache").fetchone()[0]

    def close(self) -> None:
        self.db.close()
