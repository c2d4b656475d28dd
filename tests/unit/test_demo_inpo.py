"""INPO's proving-ground comparison (posttrain/demo_inpo.py): aggregation, claims, tables, plot and the headline row's
eval.json on hand-made loop points, without training."""

from __future__ import annotations

import pytest

from posttrain.demo import CUSTOM_STAGES, DemoSettings, demo_methods
from posttrain.demo_inpo import (
    RUNS,
    InpoSettings,
    claims,
    headline_prompts,
    mean_rows,
    metric_table,
    plot_curves,
    write_eval,
    write_report,
)
from posttrain.io import read_json


def _row(seed, judge, arm, win, acc, length):
    """A loop row whose points pi_0..pi_T carry the given per-model values."""
    points = [{"model": f"pi_{t}", "iteration": t, "win_rate": w, "standard_error": None if t == 0 else 2.0,
               "accuracy": a, "mean_length_tokens": n} for t, (w, a, n) in enumerate(zip(win, acc, length))]
    return {"seed": seed, "judge": judge, "arm": arm, "points": points, "pairs": [10] * (len(points) - 1),
            "seconds": 1.0}


ROWS = [
    _row(0, "rule", "inpo", (50, 60, 70), (0.5, 0.6, 0.7), (8, 8, 8)),
    _row(1, "rule", "inpo", (50, 40, 60), (0.4, 0.5, 0.6), (8, 8, 9)),
    _row(0, "rule", "dpo", (50, 45, 55), (0.5, 0.4, 0.3), (8, 9, 9)),
    _row(1, "rule", "dpo", (50, 45, 65), (0.4, 0.4, 0.5), (8, 8, 8)),
    _row(0, "rule-longer", "inpo", (50, 50, 50), (0.5, 0.5, 0.5), (8, 9, 10)),
    _row(1, "rule-longer", "inpo", (50, 50, 50), (0.4, 0.4, 0.4), (8, 8, 9)),
    _row(0, "rule-longer", "inpo-tau0", (50, 50, 50), (0.5, 0.5, 0.5), (8, 10, 12)),
    _row(1, "rule-longer", "inpo-tau0", (50, 50, 50), (0.4, 0.4, 0.4), (8, 9, 9)),
]


def test_mean_rows_average_each_metric_over_seeds_per_iteration():
    means = mean_rows(ROWS)
    assert [(m["judge"], m["arm"]) for m in means] == [("rule", "inpo"), ("rule", "dpo"), ("rule-longer", "inpo"),
                                                        ("rule-longer", "inpo-tau0")]
    inpo = means[0]["points"]
    assert [p["win_rate"] for p in inpo] == [50, 50, 65]
    assert [p["accuracy"] for p in inpo] == pytest.approx([0.45, 0.55, 0.65])
    assert [p["mean_length_tokens"] for p in inpo] == [8, 8, 8.5]


def test_claims_hold_only_on_every_seed():
    by_name = {c["claim"]: c for c in claims(ROWS)}
    rule_win = by_name["INPO beats iterative DPO (win rate vs pi_0, last iterate, judge rule)"]
    assert rule_win["holds"] is False  # seed 1: INPO 60 < DPO 65
    assert rule_win["measured"] == "INPO 70.0 / 60.0; iterative DPO 55.0 / 65.0"
    assert by_name["INPO beats iterative DPO (accuracy, last iterate, judge rule)"]["holds"] is True
    # no iterative DPO under the length-biased judge here: nothing to compare, neither yes nor no
    assert by_name["INPO beats iterative DPO (accuracy, last iterate, judge rule-longer)"]["holds"] is None
    length = next(c for c in claims(ROWS) if c["claim"].startswith("tau > 0"))
    assert length["holds"] is False  # seed 1: both grow by 1 token
    assert "INPO +2.00 / +1.00; INPO tau 0 +4.00 / +1.00; iterative DPO not run" in length["measured"]


def test_metric_table_lists_the_mean_then_each_seed_per_run():
    lines = metric_table(ROWS, "accuracy")
    assert lines[2] == "| judge | method | seed | pi_0 | pi_1 | pi_2 |"
    assert lines[4:7] == ["| rule | inpo | mean | 0.450 | 0.550 | 0.650 |",
                          "| rule | inpo | 0 | 0.500 | 0.600 | 0.700 |", "| rule | inpo | 1 | 0.400 | 0.500 | 0.600 |"]
    assert len(lines) == 4 + 4 * 3 + 1  # title, blank, header, rule; 4 runs x (mean + 2 seeds); blank


def test_report_plot_and_results_are_written(tmp_path):
    write_report(tmp_path, ROWS, InpoSettings(iterations=2))
    report = (tmp_path / "report.md").read_text()
    assert "| rule-longer | inpo-tau0 | mean | 8.00 | 9.50 | 10.50 |" in report
    assert "| tau > 0 keeps responses shorter" in report and "![curves](curves.png)" in report
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    results = read_json(tmp_path / "results.json")
    assert results["rows"] == ROWS and len(results["means"]) == 4 and results["settings"]["iterations"] == 2


def test_plot_has_three_panels(tmp_path, monkeypatch):
    import matplotlib.figure

    saved = []
    monkeypatch.setattr("posttrain.evaluation.report.save_figure", lambda fig, path: saved.append(fig))
    plot_curves(ROWS, tmp_path / "curves.png")
    axes = saved[0].axes
    assert isinstance(saved[0], matplotlib.figure.Figure) and len(axes) == 3
    assert all(len(ax.lines) == 4 for ax in axes)  # one line per (judge, arm)


def test_headline_eval_json_is_the_last_iterate_against_sft(tmp_path):
    report = {"points": ROWS[0]["points"]}
    write_eval(tmp_path, report, DemoSettings("sort8", 3000, 500))
    evaluation = read_json(tmp_path / "eval.json")
    assert evaluation["accuracy"] == 0.7 and evaluation["vs_baseline"] == {"win_rate": 70, "standard_error": 2.0}
    assert evaluation["n"] == 500 and len(evaluation["iterations"]) == 3


def test_headline_row_comes_from_the_loop_and_scales_with_the_demo():
    assert demo_methods()["inpo"] is CUSTOM_STAGES["inpo"]  # not the one-shot stage on the SFT model's pairs
    assert [headline_prompts(n) for n in (200, 1200, 3000, 9000)] == [64, 200, 500, 512]


def test_the_no_kl_ablation_runs_only_under_the_length_biased_judge():
    assert RUNS == (("rule", "inpo"), ("rule", "dpo"), ("rule-longer", "inpo"), ("rule-longer", "dpo"),
                    ("rule-longer", "inpo-tau0"))
