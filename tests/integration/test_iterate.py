"""One iteration of `posttrain iterate` as iterative DPO (`method: dpo`, reference = pi_t) with an `llm:` judge on the
tiny model: samples, ranking with ties and failures counted, pairs, a cached precompute, training, the report
(docs/methods.md §3)."""

from __future__ import annotations

import yaml

from posttrain.cli import main
from posttrain.io import read_json, read_jsonl

from ..conftest import CPU_SETTINGS
from ..e2e.test_winrate_eval import likely_labels, widened_copy


def test_iterative_dpo_with_an_llm_judge(tiny_model_dir, tmp_path, write_recipe, capfd):
    judge = widened_copy(tiny_model_dir, tmp_path / "judge")  # the judge prompt needs more than 256 positions
    recipe = write_recipe({
        "method": "dpo", "model_name_or_path": str(tiny_model_dir), "dataset_name": "pg:sort8/preference",
        "output_dir": str(tmp_path / "loop"), "ref_logps_cache_dir": str(tmp_path / "cache"), "max_length": 64,
        "max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1, "seed": 0, **CPU_SETTINGS,
        "iterations": 1, "prompt_dataset": "pg:sort8/sft", "prompts_per_iteration": 6, "samples_per_prompt": 3,
        "sample_max_new_tokens": 8, "judge": f"llm:{judge}", "judge_labels": likely_labels(judge),
        "ranking": "all_pairs", "eval_judge": "rule-longer:sort8", "eval_num_prompts": 6,
        "generation_backend": "transformers"})
    report = main(["iterate", "--config", recipe]) or read_json(tmp_path / "loop" / "report.json")
    output = capfd.readouterr()
    loop = tmp_path / "loop"
    counts = report["details"][0]["results"]["judge"]
    assert counts["prompts"] == 6 and counts["comparisons"] == 18 and counts["pairs"] >= 1
    assert counts["ties"] + counts["failed"] + counts["pairs"] > 0  # every outcome is counted
    assert len(list(read_jsonl(loop / "iter0" / "pairs" / "pairs.jsonl"))) == counts["pairs"]
    assert "reference_model" not in yaml.safe_load((loop / "iter0" / "train.yaml").read_text())
    assert "loaded from cache" in output.out + output.err  # the train phase read what precompute scored
    assert read_json(loop / "iter0" / "train" / ".done.json")["result"]["steps"] == 2
    assert [p["model"] for p in report["points"]] == ["pi_0", "pi_1"]
    assert report["points"][1]["win_rate"] is not None and report["timing"]["generation_share"] > 0
    assert {"win_rate.png", "length.png"} <= {p.name for p in loop.glob("*.png")}
    assert "| pi_1 |" in (loop / "report.md").read_text()
