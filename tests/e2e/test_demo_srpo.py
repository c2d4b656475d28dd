"""`posttrain demo srpo`, shortened: every model revises through the SRPO run's template, in and out of distribution,
scored per revision; a rerun skips every finished stage."""

from __future__ import annotations

import json

import pytest
import yaml

from posttrain.demo_srpo import AT_REVISE, REVISE_START, REVISED, SPLITS, mean_rows, revision_table, run_srpo_comparison
from posttrain.errors import UsageError
from posttrain.revision import RevisionTemplate


def test_srpo_demo_scores_every_model_at_every_revision_in_and_out_of_distribution(tmp_path, capsys):
    output = tmp_path / "srpo"
    results = run_srpo_comparison(str(output), seeds=(0,), num_pair_prompts=200, eval_examples=20, revisions=2,
                                  revision_examples=20)
    assert results["tasks"] == {"ID": "sort8", "OOD": "sort8-rep4"}
    assert [(r["method"], r["split"]) for r in results["rows"]] == [(m, s) for s in SPLITS for m in REVISED]
    template = RevisionTemplate.load(output / "seed0/srpo")
    assert results["template"] == template.text
    for row in results["rows"]:
        assert len(row["accuracy"]) == len(row["win_rate"]) == 3
        assert all(0 <= a <= 1 for a in row["accuracy"]) and all(0 <= w <= 100 for w in row["win_rate"])
        revisions = json.loads((output / f"seed0/revise/{row['method']}/{row['task']}/revisions.json").read_text())
        assert revisions["revision_template"] == template.text and revisions["revisions"] == 2
    seed = output / "seed0"
    data = json.loads((seed / "sft-revise-data/.done.json").read_text())["result"]
    assert data["rows"] == 3 * data["pairs"] == 3 * len((seed / "pairs/pairs.jsonl").read_text().splitlines())
    for name in AT_REVISE:  # the revision-aware arms start from the positive control, on the same pairs
        recipe = yaml.safe_load((seed / name / "recipe.yaml").read_text())
        assert recipe["model_name_or_path"] == str(seed / REVISE_START)
        assert recipe["dataset_name"] == str(seed / "pairs/pairs.jsonl")
    assert RevisionTemplate.load(seed / "srpo@revise") == template
    sft_id = results["rows"][0]
    assert sft_id["method"] == "sft" and sft_id["win_rate"][0] == 50.0  # the reference against itself: all ties
    assert (output / "winrate_by_revision.png").stat().st_size > 0
    assert (output / "accuracy_by_revision.png").stat().st_size > 0
    report = (output / "report.md").read_text()
    assert "| srpo | OOD | mean |" in report and "| sft-revise (positive control) | ID | mean |" in report
    assert "| srpo@revise | OOD | mean |" in report
    capsys.readouterr()
    again = run_srpo_comparison(str(output), seeds=(0,), num_pair_prompts=200, eval_examples=20, revisions=2,
                                revision_examples=20)
    assert again["rows"] == results["rows"]
    assert " done in " not in capsys.readouterr().out  # every stage was skipped


def test_mean_rows_average_each_revision_over_seeds():
    rows = [{"method": "srpo", "seed": s, "split": "ID", "task": "sort8", "accuracy": [a, a + 0.2],
             "win_rate": [50.0, w]} for s, a, w in ((0, 0.2, 60.0), (1, 0.4, 70.0))]
    (mean,) = mean_rows(rows)
    assert mean["seed"] == "mean" and mean["accuracy"] == pytest.approx([0.3, 0.5])
    assert mean["win_rate"] == pytest.approx([50.0, 65.0])
    table = revision_table({"revisions": 1, "rows": rows, "means": [mean]}, "win_rate", ".1f")
    assert table[0] == "| method | split | seed | rev 0 | rev 1 |"
    assert table[-1] == "| srpo | ID | mean | 50.0 | 65.0 |"


def test_demo_srpo_rejects_bad_settings_before_training(tmp_path):
    with pytest.raises(UsageError, match="revisions and revision_examples must be at least 1"):
        run_srpo_comparison(str(tmp_path / "a"), revisions=0)
    with pytest.raises(UsageError, match="no out-of-distribution split"):
        run_srpo_comparison(str(tmp_path / "b"), task_name="sort6")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
