"""DYPO's trainer on the tiny model (docs/methods.md §4): the per-row fields it carries into the loss, a step's loss
as the paper's total over groups whatever the accumulation split, and the teacher-data checks."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain.errors import UsageError
from posttrain.losses import ROUTE_HARD, ROUTE_MID
from posttrain.recipe import parse_recipe
from posttrain.train import build_trainer, train
from posttrain.trainers import dypo_rewards

from ..conftest import CPU_SETTINGS

K = 4


def _routed_reward(completions, answer, **kwargs) -> list[float]:
    """Hard (all 0) unless the answer starts with 0; then the completion's text-length parity, so groups mix."""
    return [float(a.startswith("0") and len(dypo_rewards.completion_text(c)) % 2 == 1)
            for c, a in zip(completions, answer, strict=True)]


@pytest.fixture
def routed_reward(monkeypatch):
    monkeypatch.setitem(dypo_rewards.REWARDS, "exact_match", _routed_reward)


def _recipe(write_recipe, model_dir, output_dir, **extra):
    values = {"method": "dypo", "model_name_or_path": str(model_dir), "dataset_name": "pg:sort8/verifiable",
              "dataset_num_examples": 32, "output_dir": str(output_dir), "per_device_train_batch_size": 16,
              "num_generations": K, "max_completion_length": 8, "max_teacher_length": 32, "max_steps": 1,
              "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no", "seed_each_group": True,
              "seed": 0, **CPU_SETTINGS, **extra}
    return parse_recipe(["--config", write_recipe(values, "dypo.yaml")])


def _step_one(run_dir) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(row for row in rows if row.get("step") == 1 and "loss" in row)


def test_fields_carry_routes_partners_and_one_teacher_trace_per_hard_group(routed_reward, tiny_model_dir, tmp_path,
                                                                          write_recipe):
    trainer = build_trainer(_recipe(write_recipe, tiny_model_dir, tmp_path / "run"))
    trainer.model.train()
    examples = next(iter(trainer.get_train_dataloader()))
    batch = trainer._generate_and_score_completions(examples)
    route, group, success = batch["dypo_route"], batch["dypo_group"], batch["dypo_success"]
    assert group.tolist() == [row // K for row in range(16)]
    assert {ROUTE_HARD, ROUTE_MID} <= set(route.tolist())
    for g in group.unique():
        rows = group == g
        assert route[rows].unique().numel() == 1  # one route per group
        mixed = (success[rows][:, None] != success[rows][None, :]) & (route[rows][0] == ROUTE_MID)
        assert torch.equal(batch["dypo_partner_mask"][rows], mixed)  # a success pairs with each failure, and back
    teacher_rows = batch["dypo_teacher_mask"].any(dim=1).nonzero(as_tuple=True)[0].tolist()
    assert teacher_rows == [r for r in range(16) if r % K == 0 and route[r] == ROUTE_HARD]
    tokenizer = trainer.processing_class
    for r in teacher_rows:
        text = tokenizer.decode(batch["dypo_teacher_ids"][r][batch["dypo_teacher_mask"][r].bool()])
        assert text.removesuffix(tokenizer.eos_token) in examples[r]["teachers"]


def test_step_loss_is_the_papers_total_whatever_the_accumulation(routed_reward, tiny_model_dir, tmp_path,
                                                                 write_recipe):
    """Step 1, one micro-batch: L = alpha * L_GRPO + hard share * gamma * L_SFT + mid share * (1 - alpha) * L_GAL
    (each term's mean over its groups); the same 16 rollouts split into 2 accumulated micro-batches (groups cut
    across them) give the same loss."""
    whole = _step_one(train(_recipe(write_recipe, tiny_model_dir, tmp_path / "whole", alpha=0.3, gamma_sft=0.5)))
    split = _step_one(train(_recipe(write_recipe, tiny_model_dir, tmp_path / "split", alpha=0.3, gamma_sft=0.5,
                                    per_device_train_batch_size=8, gradient_accumulation_steps=2)))
    assert whole["dypo/hard_share"] > 0 and whole["dypo/mid_share"] > 0
    assert whole["dypo/hard_share"] + whole["dypo/mid_share"] + whole["dypo/easy_share"] == pytest.approx(1.0)
    expected = (0.3 * whole["loss/grpo"] + whole["dypo/hard_share"] * 0.5 * whole["loss/sft"]
                + whole["dypo/mid_share"] * 0.7 * whole["loss/gal"])
    assert whole["loss"] == pytest.approx(expected, abs=1e-4)
    assert split["loss"] == pytest.approx(whole["loss"], abs=1e-4)


@pytest.mark.parametrize(("settings", "message"), [
    ({"teacher_columns": ["teacher"]}, r"missing teacher column\(s\) teacher \(teacher_columns\)"),
    ({"num_teachers": 3}, r"row 0 has 2 teacher trace\(s\) in teachers but num_teachers is 3"),
])
def test_teacher_data_mistakes_are_one_line_errors(settings, message, tiny_model_dir, tmp_path, write_recipe):
    with pytest.raises(UsageError, match=message):
        build_trainer(_recipe(write_recipe, tiny_model_dir, tmp_path / "run", **settings))


def test_teacher_sft_is_scored_at_temperature_one_not_the_sampling_temperature(tiny_model_dir):
    """L_SFT = -logp(tau|q) under the policy itself; TRL's fused head (patched for GRPO) divides by the sampling
    temperature, which must not leak into the teacher term."""
    from trl.trainer.utils import add_fused_lm_head

    from posttrain.models import load_causal_lm
    from posttrain.trainers.dypo import DYPOTrainer

    model = load_causal_lm(str(tiny_model_dir))
    ids = torch.tensor([[5, 17, 23, 9, 41, 12, 7]])
    with torch.no_grad():
        plain = torch.log_softmax(model(input_ids=ids).logits[:, -4:-1].float(), dim=-1)
        expected = plain.gather(-1, ids[:, -3:, None]).squeeze(-1)
        add_fused_lm_head(model, temperature=0.4)
        scored = DYPOTrainer._teacher_logps(model, ids, torch.ones_like(ids), 3)
    torch.testing.assert_close(scored, expected)
