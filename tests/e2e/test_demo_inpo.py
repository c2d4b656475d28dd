"""`posttrain demo inpo` end to end, shortened: INPO and iterative DPO loops from one SFT model under the
length-biased judge, the tables and the curves, and a rerun that skips every stage."""

from __future__ import annotations

from pathlib import Path

from posttrain.demo_inpo import run_inpo_comparison
from posttrain.io import read_json

RUNS = (("rule-longer", "inpo"), ("rule-longer", "dpo"))
SMALL = {"seeds": (0,), "eval_examples": 20, "prompts_per_iteration": 32, "iterations": 1, "runs": RUNS}


def _records(root: Path) -> dict[str, int]:
    """Every finished stage under `root` (the demo's and the loops' own) -> its completion record's mtime."""
    return {str(p.parent.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob(".done.json")}


def test_inpo_comparison_runs_both_loops_from_one_sft_model_and_a_rerun_skips_every_stage(tmp_path):
    output = tmp_path / "inpo"
    rows = run_inpo_comparison(str(output), **SMALL)
    assert [(r["judge"], r["arm"]) for r in rows] == list(RUNS)
    sft = str(output / "seed0" / "sft")
    for row in rows:
        loop = output / "seed0" / row["judge"] / row["arm"]
        assert read_json(loop / "settings" / ".done.json")["result"]["model_name_or_path"] == sft  # pi_0 = SFT
        assert [p["iteration"] for p in row["points"]] == [0, 1] and all(row["pairs"])
        assert all(0 <= p["accuracy"] <= 1 and p["mean_length_tokens"] > 0 for p in row["points"])
    assert rows[0]["points"][0] == rows[1]["points"][0]  # the same pi_0, evaluated the same way
    report = (output / "report.md").read_text()
    for judge, arm in RUNS:
        assert f"| {judge} | {arm} | mean |" in report and f"| {judge} | {arm} | 0 |" in report
    assert "| INPO beats iterative DPO (win rate vs pi_0, last iterate, judge rule-longer) |" in report
    assert (output / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert read_json(output / "results.json")["rows"] == rows

    finished = _records(output)
    assert run_inpo_comparison(str(output), **SMALL) == rows
    assert _records(output) == finished  # nothing ran again: every completion record untouched
