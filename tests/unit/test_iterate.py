"""`posttrain iterate` without training: the loop's checks, the derived recipes, prompts, pairs, the train command and
the settings guard (docs/methods.md §3)."""

from __future__ import annotations

import sys

import pytest
import yaml

from posttrain.errors import UsageError
from posttrain.io import write_jsonl
from posttrain.iterate import Loop, check_loop
from posttrain.iterate_phases import make_pairs, train_command
from posttrain.recipe import load_recipe, parse_recipe

from ..conftest import CPU_SETTINGS, REPO


@pytest.fixture
def loop_recipe(tiny_model_dir, tmp_path, write_recipe):
    """loop_recipe(**keys) -> a parsed INPO recipe with the loop's keys, on the tiny model."""

    def _make(**keys):
        values = {"method": "inpo", "model_name_or_path": str(tiny_model_dir), "dataset_name": "pg:sort8/preference",
                  "dataset_num_examples": 64, "output_dir": str(tmp_path / "loop"), "max_length": 64,
                  "eval_task": "sort8", "eval_baseline_model": str(tiny_model_dir), "prompt_dataset": "pg:sort8/sft",
                  "prompts_per_iteration": 4, "judge": "rule:sort8", **CPU_SETTINGS, **keys}
        return parse_recipe(["--config", write_recipe({k: v for k, v in values.items() if v is not None})])

    return _make


def test_plain_training_ignores_the_loop_keys(loop_recipe):
    recipe = loop_recipe(samples_per_prompt=4, ranking="all_pairs")
    assert recipe.loop.samples_per_prompt == 4 and recipe.loop.ranking == "all_pairs"
    assert "samples_per_prompt" not in recipe.given and "samples_per_prompt" not in recipe.resolved()


@pytest.mark.parametrize(("keys", "expect"), [
    ({"samples_per_prompt": 1}, "samples_per_prompt must be at least 2"),
    ({"iterations": 0}, "iterations must be at least 1"),
    ({"ranking": "tournamnet"}, "did you mean 'tournament'"),
    ({"generation_backend": "vlm"}, "generation_backend 'vlm' is unknown"),
    ({"prompt_dataset": None}, "needs prompt_dataset"),
    ({"prompt_dataset": "./missing.jsonl"}, "prompt_dataset './missing.jsonl' does not exist"),
    ({"judge": None}, "needs judge"),
    ({"judge": "rulez:sort8"}, "rulez:sort8"),
    ({"sample_temperature": 0.0}, "sample_temperature > 0"),
    ({"accelerate_config": "nowhere.yaml"}, "accelerate_config 'nowhere.yaml' does not exist"),
    ({"method": "sft", "dataset_name": "pg:sort8/sft"}, "not a preference method"),
    ({"reference_model": "other/model"}, "sets reference_model itself"),
    ({"precompute_ref_log_probs": False}, r"needs the precomputed cache; set precompute_ref_log_probs true"),
])
def test_loop_mistakes_are_one_line_errors(loop_recipe, keys, expect):
    with pytest.raises(UsageError, match=expect):
        check_loop(loop_recipe(**keys))


def test_each_iteration_trains_pi_t_on_its_pairs_for_one_epoch(loop_recipe):
    recipe = loop_recipe(num_train_epochs=3, eta=0.1)
    loop = Loop(recipe)
    first, second = (yaml.safe_load(loop.train_recipe(t).read_text()) for t in (0, 1))
    root = loop.root
    assert first["model_name_or_path"] == recipe.model.model_name_or_path and "reference_model" not in first
    assert second["model_name_or_path"] == str(root / "iter0" / "train")
    assert second["reference_model"] == recipe.model.model_name_or_path  # INPO: pi_ref = pi_0 from iteration 1
    assert second["dataset_name"] == str(root / "iter1" / "pairs" / "pairs.jsonl")
    assert second["output_dir"] == str(root / "iter1" / "train") and second["num_train_epochs"] == 1
    assert second["eval_task"] == "none" and second["eta"] == 0.1
    assert "dataset_num_examples" not in second and "samples_per_prompt" not in second
    assert load_recipe(str(loop.train_recipe(1))).training.reference_model == recipe.model.model_name_or_path


def test_iterative_dpo_keeps_pi_t_as_its_reference(loop_recipe):
    loop = Loop(loop_recipe(method="dpo"))
    assert "reference_model" not in yaml.safe_load(loop.train_recipe(1).read_text())


def test_lora_iterations_start_from_the_merged_model(loop_recipe):
    loop = Loop(loop_recipe(use_peft=True))
    assert loop.policy(2) == str(loop.root / "iter1" / "merge" / "model")


def test_prompts_are_new_each_iteration_or_reused(loop_recipe):
    new, reused = Loop(loop_recipe()), Loop(loop_recipe(new_prompts_each_iteration=False))
    assert new.prompt_rows(0) != new.prompt_rows(1)
    assert reused.prompt_rows(0) == reused.prompt_rows(1) == new.prompt_rows(0)
    assert set(new.prompt_rows(1)[0]) == {"prompt", "instruction", "answer"}


def test_too_few_prompts_is_a_usage_error(loop_recipe, tmp_path):
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"sort {i}"} for i in range(6)])
    loop = Loop(loop_recipe(prompt_dataset=str(tmp_path / "prompts.jsonl")))
    assert loop.prompt_rows(0)[0]["prompt"] == [{"role": "user", "content": "sort 0"}]
    with pytest.raises(UsageError, match="has 6 rows, fewer than the 8"):
        loop.prompt_rows(1)


def test_pairs_are_the_best_and_the_worst_sample(tmp_path):
    prompt = [{"role": "user", "content": "sort 21"}]
    write_jsonl(tmp_path / "samples.jsonl", [{"prompt": prompt, "samples": ["12", "21", "1"]}] * 2)
    write_jsonl(tmp_path / "ranking.jsonl", [{"chosen": 0, "rejected": 2}, {"chosen": None, "rejected": None}])
    assert make_pairs(tmp_path, tmp_path / "samples.jsonl", tmp_path / "ranking.jsonl")["pairs"] == 1
    (row,) = [yaml.safe_load(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert row == {"prompt": prompt, "chosen": [{"role": "assistant", "content": "12"}],
                   "rejected": [{"role": "assistant", "content": "1"}]}
    write_jsonl(tmp_path / "ranking.jsonl", [{"chosen": None, "rejected": None}] * 2)
    with pytest.raises(UsageError, match="no preference pair"):
        make_pairs(tmp_path, tmp_path / "samples.jsonl", tmp_path / "ranking.jsonl")


def test_train_command_is_one_process_or_accelerate_launch(tmp_path):
    recipe = tmp_path / "train.yaml"
    assert train_command(recipe, None) == [sys.executable, "-m", "posttrain.cli", "train", "--config", str(recipe)]
    zero3 = str(REPO / "recipes" / "accelerate" / "cpu_deepspeed_zero3.yaml")
    command = train_command(recipe, zero3)
    assert command[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", zero3]
    assert command[5] == "--main_process_port" and int(command[6]) > 0  # a free port: the config names none
    assert command[7:] == ["-m", "posttrain.cli", "train", "--config", str(recipe)]


def test_a_rerun_with_other_settings_is_refused(loop_recipe):
    Loop(loop_recipe()).check_settings()
    Loop(loop_recipe(iterations=5)).check_settings()  # a longer loop continues the same run
    with pytest.raises(UsageError, match=r"other settings \(samples_per_prompt\)"):
        Loop(loop_recipe(samples_per_prompt=4)).check_settings()
