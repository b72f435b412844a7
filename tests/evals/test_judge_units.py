"""Judge pieces that need no server: parsing, Elo and win rate, agreement, config, cache."""

import pytest

from safebench.errors import UsageError
from safebench.elo import elo_ratings
from safebench.evals.judge import pairwise
from safebench.evals.judge.cache import JudgeCache, cache_key
from safebench.evals.judge.config import parse_judge_config
from safebench.evals.judge.parsing import parse_choice, parse_scores
from safebench.evals.judge.validate import agreement, majority


def test_choice_takes_last_match_and_only_offered_options():
    answer = "Options are Verdict: harmful or safe.\nVerdict: safe"
    assert parse_choice(answer, "verdict", ["harmful", "safe"]).value == "safe"
    bad = parse_choice("Verdict: maybe", "verdict", ["harmful", "safe"])
    assert not bad.ok and bad.value is None and "maybe" in bad.reason
    assert not parse_choice("", "verdict", ["harmful", "safe"]).ok
    assert not parse_choice("the reply is fine", "verdict", ["harmful", "safe"]).ok
    # word-level tokenizers decode JSON with spaces inside the quotes
    assert parse_choice('{ " winner " : " B " }', "winner", ["A", "B", "tie"]).value == "B"
    assert parse_choice(" tie", "winner", ["A", "B", "tie"]).value == "tie"


def test_scores_in_range_or_unscored_never_zero():
    ok = parse_scores("Harmlessness: 3\nHelpfulness: 9\nHarmlessness: 8", ["harmlessness", "helpfulness"], 1, 10)
    assert ok.value == {"harmlessness": 8, "helpfulness": 9}
    for answer in ["Harmlessness: 0\nHelpfulness: 5", "Harmlessness: 11\nHelpfulness: 5",
                   "Harmlessness: 7", "Harmlessness: x\nHelpfulness: 5", "7 8"]:
        parsed = parse_scores(answer, ["harmlessness", "helpfulness"], 1, 10)
        assert not parsed.ok and parsed.value is None and parsed.reason, answer


def test_win_rate_counts_ties_half_and_swaps_positions():
    assert pairwise.method_outcome("AB", "A") == 1.0
    assert pairwise.method_outcome("BA", "A") == 0.0
    assert pairwise.method_outcome("BA", "B") == 1.0
    assert pairwise.method_outcome("AB", "tie") == 0.5
    rows = [{"method": "m", "suite": "s", "criterion": "helpfulness", "status": "scored", "repeat_idx": r,
             "order": o, "value": w} for r, (o, w) in enumerate([("AB", "A"), ("BA", "B"), ("AB", "tie")])]
    rows.append({"method": "m", "suite": "s", "criterion": "helpfulness", "status": "unparsed",
                 "repeat_idx": 0, "order": "AB", "value": None})
    entry = [m for m in pairwise.PROTOCOL.summarize(rows, parse_judge_config({})) if "win_rate" in m][0]
    assert entry["win_rate_per_repeat"] == [1.0, 1.0, 0.5]
    assert entry["n_scored"] == 3 and entry["n_unscored"] == 1


def test_elo_anchors_sft_at_1000_and_orders_methods():
    matches = [("good", "sft", 1.0)] * 8 + [("good", "sft", 0.0)] * 2 + [("bad", "sft", 0.0)] * 8 + [("bad", "sft", 1.0)] * 2
    ratings = elo_ratings(matches, seed=0)
    assert ratings["sft"] == pytest.approx(1000.0)
    assert ratings["good"] > 1100 and ratings["bad"] < 900
    assert elo_ratings(matches, seed=0) == ratings  # seeded: reproducible
    even = elo_ratings([("m", "sft", 1.0), ("m", "sft", 0.0)] * 5, seed=1)
    assert abs(even["m"] - 1000) < 30


def test_agreement_accuracy_kappa_confusion():
    pairs = [("harmful", "harmful")] * 40 + [("safe", "safe")] * 40 + [("harmful", "safe")] * 10 + [("safe", "harmful")] * 10
    a = agreement(pairs)
    assert a["accuracy"] == pytest.approx(0.8) and a["kappa"] == pytest.approx(0.6)
    assert a["confusion"]["harmful"]["safe"] == 10
    constant = agreement([("harmful", "harmful")] * 5 + [("safe", "harmful")] * 5)
    assert constant["kappa"] == pytest.approx(0.0)  # always answering one label earns nothing
    assert majority(["safe", "harmful"]) is None and majority(["safe", "safe", "harmful"]) == "safe"


def test_bad_judge_config_is_one_line_usage_error():
    with pytest.raises(UsageError) as exc:
        parse_judge_config({"temperature": 5})
    assert "judge.temperature" in str(exc.value) and "5" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(UsageError, match="unknown field 'judge.modle'"):
        parse_judge_config({"modle": "x"})
    with pytest.raises(UsageError, match="no entry for model 'my-judge'"):
        parse_judge_config({"model": "my-judge", "max_cost": 1.0})
    with pytest.raises(UsageError, match="protocols"):
        parse_judge_config({"protocols": ["vibes"]})


def test_cache_refuses_empty_answers_and_separates_repeats(tmp_path):
    cache = JudgeCache(tmp_path / "c.sqlite")
    ident = {"model": "m"}
    k0 = cache_key(ident, "t", "h", [{"role": "user", "content": "x"}], {}, 0)
    k1 = cache_key(ident, "t", "h", [{"role": "user", "content": "x"}], {}, 1)
    k_edit = cache_key(ident, "t", "h2", [{"role": "user", "content": "x"}], {}, 0)
    assert len({k0, k1, k_edit}) == 3
    with pytest.raises(ValueError):
        cache.put(k0, "m", "t", "  ", 1, 0, None)
    cache.put(k0, "m", "t", "Verdict: safe", 10, 2, 0.1)
    assert set(cache.get_many([k0, k1])) == {k0}
