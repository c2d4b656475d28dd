"""DYPO under 2-process DeepSpeed ZeRO-3 with mid groups (GRPO + GAL, a group cut across the processes), not only
the hard groups an untrained model gives: the step-1 loss equals one process's on the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.data.tasks import final_answer
from posttrain.recipe import parse_recipe
from posttrain.train import build_trainer

from .launching import REPO
from .test_deepspeed_cpu import (
    PER_DEVICE_BATCH,
    _launch,
    _metrics,
    _single_process,
    _step_loss,
    tiny_model,  # noqa: F401 (the module's model fixture)
)

pytestmark = pytest.mark.distributed

ROWS = 64


def _rows_answered_by_first_rollouts(model: Path, tmp_path: Path) -> Path:
    """The toy data's first rows, each prompt's `answer` replaced by the final field of one rollout that step 1
    samples for it. `seed_each_group` fixes every rollout in advance, so the first step's groups mix (mid)."""
    recipe = parse_recipe(["--config", str(REPO / "recipes" / "dypo" / "sort8_tiny_cpu.yaml"),
                           "--model_name_or_path", str(model), "--output_dir", str(tmp_path / "probe"),
                           "--dataset_num_examples", str(ROWS), "--eval_task", "",
                           "--per_device_train_batch_size", str(2 * PER_DEVICE_BATCH)])
    trainer = build_trainer(recipe)
    trainer.model.train()
    examples = next(iter(trainer.get_train_dataloader()))
    batch = trainer._generate_and_score_completions(examples)
    k, answers = recipe.training.num_generations, {}
    for row in range(0, len(examples), k):
        texts = [trainer.processing_class.decode(ids[mask.bool()], skip_special_tokens=True)
                 for ids, mask in zip(batch["completion_ids"][row:row + k], batch["completion_mask"][row:row + k],
                                      strict=True)]
        answers[examples[row]["prompt"][0]["content"]] = next((final_answer(t) for t in texts if final_answer(t)), "")
    path = tmp_path / "rows.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for example in trainer.train_dataset:
            answer = answers.get(example["prompt"][0]["content"], example["answer"])
            out.write(json.dumps({**example, "answer": answer}) + "\n")
    return path


def test_dypo_zero3_mid_groups_match_single_process_loss(tiny_model, tmp_path):  # noqa: F811
    data = _rows_answered_by_first_rollouts(tiny_model, tmp_path)
    zero3, single = tmp_path / "zero3", tmp_path / "single"
    _launch("dypo", tiny_model, zero3, "--dataset_name", str(data), "--eval_task", "", "--max_steps", "1")
    _single_process("dypo", tiny_model, single, "--dataset_name", str(data), "--eval_task", "", "--max_steps", "1",
                    "--per_device_train_batch_size", str(2 * PER_DEVICE_BATCH))
    first = next(row for row in _metrics(zero3) if row.get("step") == 1 and "loss" in row)
    assert first["dypo/mid_share"] > 0 and "loss/gal" in first, first
    assert abs(_step_loss(zero3, 1) - _step_loss(single, 1)) <= 1e-4
