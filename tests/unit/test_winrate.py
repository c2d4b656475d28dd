"""Win-rate metrics in AlpacaEval conventions, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest

from posttrain.evaluation.winrate import winrate_metrics
from posttrain.judges import MODEL_WINS, REFERENCE_WINS, TIE, RuleJudge


def test_hand_computed_metrics():
    # preferences 2, 1, 1.5, 2 -> shifted 1, 0, .5, 1: mean .625, sample var = (.140625+.390625+.015625+.140625)/3
    m = winrate_metrics([2, 1, 1.5, 2])
    assert m["win_rate"] == pytest.approx(62.5)
    assert m["standard_error"] == pytest.approx(100 * math.sqrt(0.6875 / 3 / 4))
    assert (m["n_wins"], m["n_wins_base"], m["n_draws"], m["n_total"]) == (2, 1, 1, 4)
    assert m["discrete_win_rate"] == pytest.approx(62.5)


def test_zero_means_tie_and_soft_preferences():
    assert winrate_metrics([0, 0])["n_draws"] == 2
    m = winrate_metrics([1.8, 1.2])
    assert m["win_rate"] == pytest.approx(50.0) and m["n_wins"] == 1 and m["n_wins_base"] == 1
    with pytest.raises(ValueError):
        winrate_metrics([])


def test_rule_judge_prefers_the_correct_output():
    judge = RuleJudge(lambda out, ans: float(out == ans))
    prefs = judge.judge(["q"] * 3, references=["a", "x", "a"], outputs=["a", "b", "y"], answers=["a", "b", "a"])
    assert prefs == [TIE, MODEL_WINS, REFERENCE_WINS]
