"""`posttrain demo unlearn` end to end at a tiny size: the shared stages, four arms for one seed, the tables, and a
rerun that skips every stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.demo_unlearn import ARMS, UnlearnDemoSettings, run_unlearn_comparison
from posttrain.errors import UsageError
from posttrain.io import read_json

SMALL = UnlearnDemoSettings(sft_epochs=6, trace_facts=3, unlearn_epochs=1, retain_eval_facts=10)


def _records(root: Path) -> dict[str, int]:
    return {str(p.parent.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob(".done.json")}


def test_unlearn_demo_traces_unlearns_four_ways_scores_and_a_rerun_skips_every_stage(tmp_path):
    output = tmp_path / "unlearn"
    results = run_unlearn_comparison(str(output), seeds=(0,), settings=SMALL)
    trace = results["trace"]
    assert trace["num_facts"] == 3 and trace["suggested_layers"] and trace["num_layers"] == 8
    assert (output / "trace" / "trace_mlp.png").read_bytes()[:4] == b"\x89PNG"
    assert [(r["arm"], r["seed"]) for r in results["rows"]] == [(arm, 0) for arm in ARMS]
    layers = {r["arm"]: r["layers"] for r in results["rows"]}
    assert layers["traced"] == trace["suggested_layers"] and layers["gd-full"] == layers["npo-full"] == "full"
    assert len(layers["random"]) == len(layers["traced"]) and not set(layers["random"]) & set(layers["traced"])
    for row in [results["before"], *results["rows"]]:
        assert all(0 <= row[k] <= 1 for k in ("forget_regurgitation", "retain_knowledge", "mia_auc"))
        assert row["holdout_nll"] > 0
    assert len({r["steps"] for r in results["rows"]}) == 1  # one step budget for every arm
    report = (output / "report.md").read_text()
    assert "| before (facts model) | - | - |" in report and "| traced | " in report
    assert "| npo-full | full | 0 |" in report
    assert "The paper's claim" in report and read_json(output / "results.json")["rows"] == results["rows"]

    finished = _records(output)
    assert run_unlearn_comparison(str(output), seeds=(0,), settings=SMALL)["rows"] == results["rows"]
    assert _records(output) == finished  # nothing ran again
    with pytest.raises(UsageError, match="other settings"):
        run_unlearn_comparison(str(output), seeds=(0,), settings=UnlearnDemoSettings(sft_epochs=7))
