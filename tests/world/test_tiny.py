"""The tiny world has the structure the RePO experiment needs."""

from __future__ import annotations

import random
import statistics

from safebench.world import tiny


def test_eval_prompts_hold_out_whole_verb_object_pairs():
    train, evaluation = tiny.split_prompts(0)
    train_pairs = {(p.kind, p.verb, p.obj) for p in train}
    assert evaluation and all((p.kind, p.verb, p.obj) not in train_pairs for p in evaluation)
    assert {p.kind for p in evaluation} == {"harmful", "benign", "over-refusal"}


def test_oracle_orders_the_three_answer_shapes():
    rng = random.Random(0)
    prompt = next(p for p in tiny.all_prompts() if p.kind == "harmful" and p.temptation > 2)
    harmful = tiny.oracle(prompt, tiny.harmful_answer(prompt, rng, 2))
    safe_help = tiny.oracle(prompt, tiny.safe_helpful_answer(prompt, rng, 2))
    refuse = tiny.oracle(prompt, tiny.refusal(rng, 2))
    assert harmful.cost > 0 >= safe_help.cost > refuse.cost       # refusals are far below 0
    assert refuse.cost <= -1 and -1 < safe_help.cost < 0
    assert harmful.reward > safe_help.reward > refuse.reward        # the reward model is tempted


def test_prompts_differ_in_how_much_safety_costs():
    """Some harmful prompts lose little by answering safely, others a lot (per-prompt heterogeneity)."""
    rng = random.Random(0)
    gaps = []
    for p in tiny.all_prompts():
        if p.kind == "harmful":
            gaps.append(tiny.oracle(p, tiny.harmful_answer(p, rng, 2)).reward
                        - tiny.oracle(p, tiny.safe_helpful_answer(p, rng, 2)).reward)
    assert min(gaps) < 0.5 and max(gaps) > 2.5


def test_sft_data_is_partly_unsafe_with_mean_cost_near_zero():
    data = tiny.build_datasets(0, 600, 4, 3)
    prompts = tiny.prompt_by_text()
    judged = [tiny.oracle(prompts[r["prompt"]], r["response"]) for r in data["sft"]
              if prompts[r["prompt"]].kind == "harmful"]
    safe_rate = sum(j.safe for j in judged) / len(judged)
    assert 0.3 < safe_rate < 0.6
    assert abs(statistics.mean(j.cost for j in judged)) < 0.3  # an average constraint is nearly met


def test_refusing_benign_or_edgy_prompts_is_unhelpful():
    rng = random.Random(0)
    for kind in ("benign", "over-refusal"):
        p = next(p for p in tiny.all_prompts() if p.kind == kind)
        answer = tiny.oracle(p, tiny.harmful_answer(p, rng, 2))  # benign "how to" steps
        refuse = tiny.oracle(p, tiny.refusal(rng, 0))
        assert answer.safe and answer.reward > refuse.reward


def test_preference_labels_agree_with_the_oracle():
    data = tiny.build_datasets(1, 50, 1, 2)
    prompts = tiny.prompt_by_text()
    for record in data["preference"]:
        p = prompts[record["prompt"]]
        j = [tiny.oracle(p, record["response_0"]), tiny.oracle(p, record["response_1"])]
        b, s = record["better_response_id"], record["safer_response_id"]
        assert j[b].reward >= j[1 - b].reward
        assert j[s].cost <= j[1 - s].cost
        assert record["is_response_0_safe"] == j[0].safe


def test_tokenizer_round_trips_world_text():
    tokenizer = tiny.build_tokenizer()
    text = "i will not explain that , but here is a safe option : tip call tip expert ."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_heldout_pairs_are_on_evaluation_prompts_and_leave_training_data_unchanged():
    data = tiny.build_datasets(seed=0, train_prompts=600, sft_per_prompt=4, pairs_per_prompt=3)
    heldout = data["preference_heldout"]
    _, evaluation = tiny.split_prompts(0)
    assert len(heldout) == 3 * len(evaluation) >= 300   # hundreds of pairs behind a held-out accuracy
    eval_texts = {p.prompt for p in evaluation}
    assert {r["prompt"] for r in heldout} == eval_texts
    assert not eval_texts & {r["prompt"] for r in data["preference"]}
    assert {r["kind"] for r in heldout} == {"harmful", "benign", "over-refusal"}
    # labelled by the oracle as the training pairs are
    by_text = tiny.prompt_by_text()
    for r in heldout[:50]:
        costs = [tiny.oracle(by_text[r["prompt"]], r[f"response_{i}"]).cost for i in (0, 1)]
        assert costs[r["safer_response_id"]] <= costs[1 - r["safer_response_id"]]
        assert r["is_response_0_safe"] == (costs[0] <= 0)
