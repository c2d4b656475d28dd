"""`posttrain demo unlearn`'s pure parts on hand-made numbers: the claim, the means, the tables, the random layers."""

from __future__ import annotations

import math

import pytest

from posttrain.demo_unlearn import UnlearnDemoSettings, arm_layers, random_layers
from posttrain.demo_unlearn_report import claim, claim_table, compact_row, headline_lines, mean_rows, metric_table
from posttrain.errors import UsageError

BEFORE = {"forget_regurgitation": 1.0, "forget_knowledge": 1.0, "retain_regurgitation": 1.0, "retain_knowledge": 0.8,
          "aggregate": 0.0, "mia_auc": 0.8, "mia_score": 0.4, "holdout_nll": 3.0}


def _row(arm, seed, forget, retain, nll, layers=(0, 1)):
    row = {"arm": arm, "seed": seed, "layers": list(layers), "forget_regurgitation": forget, "forget_knowledge": 0.0,
           "retain_regurgitation": retain, "retain_knowledge": 0.8 * retain, "aggregate": 0.5, "mia_auc": 0.5,
           "mia_score": 1.0, "holdout_nll": nll}
    return {**row, **claim(row, BEFORE)}


def test_claim_holds_at_the_targets_and_fails_just_past_them():
    at = _row("traced", 0, forget=0.2, retain=0.9, nll=3.0 - math.log(0.9))
    assert at["forget_drop"] == pytest.approx(0.8) and at["retain_regurgitation_kept"] == pytest.approx(0.9)
    assert at["retain_knowledge_kept"] == pytest.approx(0.9) and at["general_kept"] == pytest.approx(0.9)
    assert at["holds"] is True
    assert _row("traced", 0, forget=0.21, retain=1.0, nll=3.0)["holds"] is False  # forget fell by only 79%
    assert _row("traced", 0, forget=0.0, retain=0.89, nll=3.0)["holds"] is False  # retain kept 89%
    assert _row("traced", 0, forget=0.0, retain=1.0, nll=3.2)["general_kept"] == pytest.approx(math.exp(-0.2))


def test_claim_is_undecided_without_a_number():
    row = _row("traced", 0, forget=0.0, retain=1.0, nll=3.0)
    result = claim({**row, "holdout_nll": None}, BEFORE)
    assert result["forget_drop"] == 1.0 and result["general_kept"] is None and result["holds"] is None


def test_means_average_each_metric_per_arm_and_count_the_seeds_that_held():
    rows = [_row("traced", 0, 0.0, 1.0, 3.0), _row("traced", 1, 0.4, 0.8, 3.0),
            _row("random", 0, 0.5, 1.0, 3.0, layers=(2, 5)), _row("random", 1, 0.7, 1.0, 3.0, layers=(3, 6))]
    traced, random_ = mean_rows(rows, BEFORE)
    assert traced["arm"] == "traced" and traced["seed"] == "mean" and traced["layers"] == [0, 1]
    assert traced["forget_regurgitation"] == pytest.approx(0.2) and traced["retain_regurgitation"] == 0.9
    assert traced["forget_drop"] == pytest.approx(0.8) and traced["holds"] is True  # the claim on the means
    assert (traced["holds_per_seed"], traced["seeds"]) == (1, 2)
    assert random_["layers"] == "per seed" and random_["forget_regurgitation"] == pytest.approx(0.6)
    assert random_["holds"] is False and random_["holds_per_seed"] == 0


def test_tables_list_the_start_every_seed_and_the_means():
    rows = [_row("traced", 0, 0.0, 1.0, 3.0), _row("gd-full", 0, 0.1, 0.5, 4.0, layers=())]
    rows[1]["layers"] = "full"
    means = mean_rows(rows, BEFORE)
    metrics = metric_table(BEFORE, rows, means)
    assert metrics[2] == ("| before (facts model) | - | - | 1.000 | 1.000 | 1.000 | 0.800 | 0.000 | 0.800 | 0.400 "
                          "| 3.000 |")
    assert metrics[3].startswith("| traced | 0,1 | 0 | 0.000 |") and metrics[4].startswith("| traced | 0,1 | mean |")
    assert metrics[5].startswith("| gd-full | full | 0 | 0.100 |") and len(metrics) == 7
    claims = claim_table(means)
    assert claims[2] == "| traced | 100.0% | 100.0% | 100.0% | 100.0% | yes | 1/1 |"
    assert claims[3] == "| gd-full | 90.0% | 50.0% | 50.0% | 36.8% | no | 0/1 |"
    headline = headline_lines({"before": BEFORE, "means": means})
    assert "| unlearn (traced) | 0.000 | 1.000 | 0.800 | 3.000 | 100.0% | 100.0% | 100.0% |" in headline


def test_compact_row_reads_the_evaluation_results():
    results = {"overall": {"forget": {"regurgitation": 0.1, "knowledge": 0.0},
                           "retain": {"regurgitation": 0.9, "knowledge": 0.7}},
               "aggregate": {"value": 0.4}, "mia": {"auc": 0.6, "score": 0.8, "mean_nonmember_nll": 3.5,
                                                    "mean_member_nll": 5.0}}
    assert compact_row(results) == {"forget_regurgitation": 0.1, "forget_knowledge": 0.0, "retain_regurgitation": 0.9,
                                    "retain_knowledge": 0.7, "aggregate": 0.4, "mia_auc": 0.6, "mia_score": 0.8,
                                    "holdout_nll": 3.5, "forget_document_nll": 5.0}
    assert compact_row({**results, "mia": None})["mia_auc"] is None


def test_random_layers_avoid_the_traced_ones_and_follow_the_seed():
    assert random_layers([0, 1], 8, 0) == random_layers([0, 1], 8, 0)
    draws = {tuple(random_layers([0, 1], 8, seed)) for seed in range(20)}
    assert len(draws) > 1 and all(len(d) == 2 and not {0, 1} & set(d) and list(d) == sorted(d) for d in draws)
    assert sorted(random_layers([0, 1, 2, 3, 4], 8, 0)) == random_layers([0, 1, 2, 3, 4], 8, 0)  # too few others:
    assert len(set(random_layers([0, 1, 2, 3, 4], 8, 0))) == 5  # drawn from every layer
    trace = {"suggested_layers": [0, 1], "num_layers": 8}
    assert arm_layers("traced", trace, 0) == [0, 1] and arm_layers("gd-full", trace, 0) == "full"
    assert arm_layers("random", trace, 3) == random_layers([0, 1], 8, 3)


def test_settings_refuse_a_non_positive_size():
    with pytest.raises(UsageError, match="trace_facts must be positive"):
        UnlearnDemoSettings(trace_facts=0)
