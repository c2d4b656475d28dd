"""`posttrain demo dypo` end to end, shortened: four arms from one SFT model, curves, claims, a resumable rerun."""

from __future__ import annotations

from posttrain.demo_dypo import ARMS, HARD, run_dypo_comparison


def test_dypo_comparison_trains_every_arm_from_one_sft_model(tmp_path):
    output = tmp_path / "dypo"
    rows = run_dypo_comparison(str(output), seeds=(0,), eval_examples=20, steps=2, eval_every=1)
    assert [r["arm"] for r in rows] == list(ARMS)
    assert len({r["sft_accuracy"] for r in rows}) == 1
    for row in rows:
        assert [step for step, _ in row["accuracy_by_step"]] == [0, 1, 2]
        assert row["accuracy_by_step"][0][1] == row["sft_accuracy"]  # step 0 is the SFT model itself
        assert row["accuracy_by_step"][-1][1] == row["accuracy"]
        assert bool(row[HARD]) == row["arm"].startswith("dypo")  # only DYPO logs its routes
    report = (output / "report.md").read_text()
    assert all(f"| 0 | {arm} |" in report for arm in ARMS) and "| two teachers beat one |" in report
    assert (output / "curves.png").stat().st_size > 0
    assert run_dypo_comparison(str(output), seeds=(0,), eval_examples=20, steps=2, eval_every=1) == rows
