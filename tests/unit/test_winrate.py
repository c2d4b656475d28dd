"""Win-rate metrics in AlpacaEval conventions, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest

from posttrain.evaluation import winrate as w
from posttrain.evaluation.winrate import winrate_metrics
from posttrain.judges import MODEL_WINS, REFERENCE_WINS, TIE, RuleJudge


def test_hand_computed_metrics():
    # preferences 2, 1, 1.5, 2 -> shifted 1, 0, .5, 1: mean .625, sample var = (.140625+.390625+.015625+.140625)/3
    m = winrate_metrics([2, 1, 1.5, 2])
    assert m["win_rate"] == pytest.approx(62.5)
    assert m["standard_error"] == pytest.approx(100 * math.sqrt(0.6875 / 3 / 4))
    assert (m["n_wins"], m["n_wins_base"], m["n_draws"], m["n_total"], m["n_failed"]) == (2, 1, 1, 4, 0)
    assert m["discrete_win_rate"] == pytest.approx(62.5)


def test_zero_means_tie_and_soft_preferences():
    assert winrate_metrics([0, 0])["n_draws"] == 2
    assert w.win_rate([0, 2]) == pytest.approx(75.0)
    m = winrate_metrics([1.8, 1.2])
    assert m["win_rate"] == pytest.approx(50.0) and m["n_wins"] == 1 and m["n_wins_base"] == 1
    # soft preferences count fractionally in win_rate but as whole wins/losses in the discrete win rate
    assert w.win_rate([1.9, 1.9, 1.2]) == pytest.approx(200 / 3)
    assert w.discrete_win_rate([1.9, 1.9, 1.2]) == pytest.approx(200 / 3)
    assert w.discrete_win_rate([1.6, 1.0, 1.5, 1.5]) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        winrate_metrics([])


def test_missing_preferences_are_dropped_and_counted_never_ties():
    prefs = [2.0, None, 1.0, float("nan"), 2.0]
    m = winrate_metrics(prefs)
    assert (m["n_total"], m["n_failed"], m["n_draws"], m["n_wins"]) == (3, 2, 0, 2)
    assert m["win_rate"] == pytest.approx(200 / 3)
    assert m["standard_error"] == pytest.approx(w.standard_error([2.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="every annotation is missing"):
        w.win_rate([None, None])


def test_out_of_range_preference_is_refused():
    with pytest.raises(ValueError, match="outside"):
        w.win_rate([2.5])


def test_standard_error_of_one_example_is_nan():
    assert math.isnan(w.standard_error([2.0]))


def test_avg_length_truncates_the_mean_character_length():
    assert w.avg_length(["abc", "abcd"]) == 3  # 3.5 -> 3, as the leaderboard prints it


def test_length_controlled_winrate_removes_a_pure_length_effect():
    # The model wins exactly when it is longer, 75% of the time: raw win rate 75, but at equal length a coin flip.
    deltas = [10, 20, 30, -10, 10, 20, 30, -10, 5, 15, 25, -5] * 5
    prefs = [2.0 if d > 0 else 1.0 for d in deltas]
    reference = [100] * len(deltas)
    model = [100 + d for d in deltas]
    assert w.win_rate(prefs) == pytest.approx(75.0)
    lc = w.length_controlled_winrate(prefs, model, reference)
    assert lc < 60.0
    # with no length difference at all, the fit is intercept-only and gives back the win rate
    same = w.length_controlled_winrate([2.0, 2.0, 1.0, 1.5], [5] * 4, [5] * 4)
    assert same == pytest.approx(w.win_rate([2.0, 2.0, 1.0, 1.5]), abs=1e-3)


def test_length_controlled_winrate_edge_cases():
    assert w.length_controlled_winrate([2.0, 2.0], [3, 9], [5, 5]) == 100.0
    assert w.length_controlled_winrate([1.0, None], [3, 9], [5, 5]) == 0.0
    assert w.length_controlled_winrate([1.5, 1.5, 1.5], [3, 9, 4], [5, 5, 5]) == pytest.approx(50.0)


def test_metrics_with_outputs_add_length_fields():
    m = winrate_metrics([2.0, 1.0, None], model_outputs=["aaaa", "bb", "c"], reference_outputs=["a", "b", "c"])
    assert m["avg_length"] == 2 and m["n_failed"] == 1 and 0 < m["length_controlled_winrate"] < 100


def test_rule_judge_prefers_the_correct_output():
    judge = RuleJudge(lambda out, ans: float(out == ans))
    prefs = judge.judge(["q"] * 3, references=["a", "x", "a"], outputs=["a", "b", "y"], answers=["a", "b", "a"])
    assert prefs == [TIE, MODEL_WINS, REFERENCE_WINS]
