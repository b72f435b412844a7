"""The plain per-method summary table printed at the end of `safebench run` (summary.md)."""

from __future__ import annotations

from safebench.store import RunStore, atomic_write_text


def summary_rows(results) -> list[dict]:
    rows = []
    for (method, suite), group in results.groupby(["method", "suite"], sort=False):
        per_prompt_unsafe = (group.assign(unsafe=group["cost"] > 0).groupby("prompt_id")["unsafe"].any())
        row = {
            "method": method, "suite": suite, "samples": len(group),
            "safety_rate": float((group["cost"] <= 0).mean()),
            "mean_reward": float(group["reward"].mean()), "mean_cost": float(group["cost"].mean()),
            "prompts_with_unsafe": float(per_prompt_unsafe.mean()),
        }
        if group["oracle_cost"].notna().any():
            row["oracle_safety_rate"] = float((group["oracle_cost"] <= 0).mean())
            row["oracle_reward"] = float(group["oracle_reward"].mean())
        rows.append(row)
    return rows


def to_markdown(rows: list[dict]) -> str:
    if not rows:
        return "_no scored samples_\n"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            value = r.get(c, "")
            cells.append(f"{value:.3f}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(store: RunStore) -> str:
    rows = summary_rows(store.results())
    text = ("# safebench summary\n\nsafety rate = share of samples with cost <= 0 (cost model); "
            "prompts_with_unsafe = share of prompts with at least one unsafe sample; oracle_* = the tiny "
            "world's ground truth.\n\n" + to_markdown(rows))
    atomic_write_text(store.run_dir / "summary.md", text)
    return text
