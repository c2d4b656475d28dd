"""Honest reruns (issue 11, defect 1) and whole-run records after a resume (defect 7): a rerun that changes training
settings is refused or recorded, metrics hold one line per step, and the totals cover the whole run."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import yaml

from posttrain.cli import main
from posttrain.runs import affects_training

from ..conftest import CPU_SETTINGS


@pytest.fixture
def recipe_for(tiny_model_dir, tmp_path):
    def _write(run_dir, **extra) -> str:
        values = {"method": "sft", "model_name_or_path": str(tiny_model_dir), "dataset_name": "pg:sort8/sft",
                  "dataset_num_examples": 32, "output_dir": str(run_dir), "per_device_train_batch_size": 8,
                  "max_steps": 4, "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "steps",
                  "save_steps": 2, "max_length": 64, "seed": 0, **CPU_SETTINGS, **extra}
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        return str(path)

    return _write


def _train(recipe: str, *flags: str) -> None:
    main(["train", "--config", recipe, *flags])


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_settings_are_classified_as_documented():
    assert not any(map(affects_training, ["logging_steps", "save_steps", "report_to", "eval_task", "output_dir",
                                          "verbose", "continue_with_changes", "hub_model_id", "run_name"]))
    assert all(map(affects_training, ["learning_rate", "seed", "lr_scheduler_type", "beta", "lora_r", "max_steps"]))


def test_a_rerun_that_changes_training_settings_is_refused_before_anything_is_rewritten(recipe_for, tmp_path,
                                                                                       capsys):
    run_dir = tmp_path / "run"
    _train(recipe_for(run_dir))
    recorded = {name: (run_dir / name).read_bytes() for name in ("recipe.yaml", "run_config.json", "metrics.jsonl")}
    capsys.readouterr()
    for extra in ({"max_steps": 6}, {}):  # a longer run, and the same (finished) length: both refused
        with pytest.raises(SystemExit) as stop:
            _train(recipe_for(run_dir, learning_rate=5e-4, **extra))
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
        assert "learning_rate 0.001 -> 0.0005" in err and "max_steps" not in err
        assert "--output_dir" in err and "--auto_resume false" in err and "--continue_with_changes true" in err
        assert {name: (run_dir / name).read_bytes() for name in recorded} == recorded
    _train(recipe_for(run_dir, logging_steps=2, save_steps=1))  # not training settings: still finished
    assert "nothing to do" in capsys.readouterr().out
    assert {name: (run_dir / name).read_bytes() for name in recorded} == recorded


def test_continuing_with_changes_trains_with_the_new_values_and_records_both(recipe_for, tmp_path):
    run_dir = tmp_path / "run"
    _train(recipe_for(run_dir))
    _train(recipe_for(run_dir, learning_rate=5e-4, max_steps=6, continue_with_changes=True))
    step5 = next(r for r in _records(run_dir) if r["step"] == 5 and "learning_rate" in r)
    assert step5["learning_rate"] == pytest.approx(5e-4 * 2 / 6)  # the new base rate on the linear schedule
    history = [json.loads(line) for line in (run_dir / "recipe_history.jsonl").read_text().splitlines()]
    assert [(h["first_step"], h["last_step"]) for h in history] == [(1, 4)]
    assert history[0]["settings"]["learning_rate"] == 1e-3
    assert history[0]["changed_after"] == {"learning_rate": [1e-3, 5e-4], "max_steps": [4, 6]}
    recipe_text = (run_dir / "recipe.yaml").read_text()
    assert recipe_text.startswith("# These settings trained from step 5 on") and "learning_rate: 0.0005" in recipe_text
    assert json.loads((run_dir / "run_config.json").read_text())["learning_rate"] == 5e-4


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_resume_keeps_one_line_per_step_and_whole_run_totals(recipe_for, tmp_path):
    run_dir = tmp_path / "run"
    recipe = recipe_for(run_dir, verbose=True)
    _train(recipe)
    straight = _records(run_dir)
    for lost in ("checkpoint-4", "model.safetensors", ".done.json"):  # as if killed after step 4's log line
        shutil.rmtree(run_dir / lost) if (run_dir / lost).is_dir() else (run_dir / lost).unlink()
    saved = json.loads((run_dir / "checkpoint-2" / "trainer_state.json").read_text())["stateful_callbacks"]
    trainer_log, seen = logging.getLogger("transformers.trainer"), _Collect()
    trainer_log.addHandler(seen)
    try:
        _train(recipe)
    finally:
        trainer_log.removeHandler(seen)
    assert not [m for m in seen.messages if "missing keys" in m]  # the tied lm_head.weight is not "missing"
    resumed = _records(run_dir)
    assert [r["step"] for r in resumed if "loss" in r] == [1, 2, 3, 4]
    summaries = [r for r in resumed if "train_loss" in r]
    assert len(summaries) == 1
    assert summaries[0]["train_loss"] == pytest.approx(straight[-1]["train_loss"], rel=1e-5)
    assert summaries[0]["train_runtime"] > saved["MetricsJsonlCallback"]["attributes"]["seconds_before"] > 0
    tokens = [r["num_tokens"] for r in resumed if "num_tokens" in r]
    assert tokens == [r["num_tokens"] for r in straight if "num_tokens" in r] and tokens[-1] > tokens[1]


def test_a_damaged_checkpoint_stops_the_rerun_before_anything_is_written(recipe_for, tmp_path, capsys):
    checkpoint = tmp_path / "run" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"global_st')  # cut off while being written
    with pytest.raises(SystemExit) as stop:
        _train(recipe_for(tmp_path / "run"))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and f"checkpoint {checkpoint}" in err
    assert [p.name for p in (tmp_path / "run").rglob("*")] == ["checkpoint-2", "trainer_state.json"]


def test_a_rerun_may_change_the_logging_and_saving_intervals_and_they_apply(recipe_for, tmp_path):
    """transformers resumes with the checkpoint's logging/save intervals; ours are documented as free to change."""
    run_dir = tmp_path / "run"
    _train(recipe_for(run_dir, save_steps=2, logging_steps=2))
    _train(recipe_for(run_dir, max_steps=8, save_steps=3, logging_steps=1))
    logged = [r["step"] for r in _records(run_dir) if "loss" in r]
    assert logged == [2, 4, 5, 6, 7, 8]
    assert (run_dir / "checkpoint-6").is_dir() and not (run_dir / "checkpoint-5").exists()
