"""INPO's trainer on the tiny model (docs/methods.md §3): which model each precomputed column holds, the step-1
loss, the logged terms, and a second construction served entirely by the cache (the loop's precompute phase)."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain.errors import UsageError
from posttrain.recipe import parse_recipe
from posttrain.train import build_trainer

from ..conftest import CPU_SETTINGS

ROWS, ETA, TAU_RATIO = 16, 0.5, 0.25


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory):
    """A second tiny model (another seed, same tokenizer) to serve as pi_ref."""
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("ref") / "tiny-ref", tokenizer_corpus(), seed=1)


def _recipe(write_recipe, model_dir, output_dir, **extra):
    values = {"method": "inpo", "model_name_or_path": str(model_dir), "dataset_name": "pg:sort8/preference",
              "dataset_num_examples": ROWS, "output_dir": str(output_dir), "per_device_train_batch_size": ROWS,
              "max_steps": 1, "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no", "max_length": 64,
              "eta": ETA, "tau_ratio": TAU_RATIO, "seed": 0, **CPU_SETTINGS, **extra}
    return parse_recipe(["--config", write_recipe(values, "inpo.yaml")])


def _columns(dataset, prefix):
    return {name: torch.tensor(dataset[f"{prefix}_{name}_logps"]) for name in ("chosen", "rejected")}


def _plain_logps(model_dir, trainer) -> dict:
    """Summed completion log-probs of every training row under the model at `model_dir`, by a plain forward."""
    from posttrain.models import load_causal_lm

    model = load_causal_lm(str(model_dir)).eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(ROWS)])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    sums = (token_logps * batch["completion_mask"][:, 1:]).sum(1)
    return {"chosen": sums[:ROWS], "rejected": sums[ROWS:]}


def _step1_loss(prev: dict, ref: dict) -> float:
    """At step 1 the policy is pi_t, so D_pi = D_t: residual = tau_ratio*(D_t - D_ref) - 1/(2*eta)."""
    d_t, d_ref = prev["chosen"] - prev["rejected"], ref["chosen"] - ref["rejected"]
    return ((TAU_RATIO * (d_t - d_ref) - 1 / (2 * ETA)) ** 2).mean().item()


def test_iteration_zero_copies_pi_t_as_pi_ref_and_starts_at_the_ipo_target(tiny_model_dir, tmp_path, write_recipe):
    trainer = build_trainer(_recipe(write_recipe, tiny_model_dir, tmp_path / "run"))
    prev, ref = _columns(trainer.train_dataset, "prev"), _columns(trainer.train_dataset, "ref")
    assert all(torch.equal(prev[n], ref[n]) for n in prev)
    plain = _plain_logps(tiny_model_dir, trainer)
    assert all(torch.allclose(prev[n], plain[n], atol=1e-4) for n in prev)
    trainer.train()
    record = trainer.state.log_history[0]
    assert record["loss"] == pytest.approx(1 / (2 * ETA) ** 2, rel=1e-4)  # D_pi = D_ref: (0 - 1/(2 eta))^2
    assert record["inpo/residual"] == pytest.approx(-1 / (2 * ETA), rel=1e-4)
    assert record["inpo/target"] == pytest.approx(record["inpo/ref_margin"] + 1 / (2 * ETA), rel=1e-4)
    assert record["inpo/policy_margin"] == pytest.approx(record["inpo/prev_margin"], abs=1e-3)
    assert record["rewards/margins"] == pytest.approx(0.0, abs=1e-4)  # eta * (D_pi - D_ref)


def test_reference_model_is_scored_once_then_served_by_the_cache(tiny_model_dir, other_model_dir, tmp_path,
                                                                 write_recipe):
    recipe = _recipe(write_recipe, tiny_model_dir, tmp_path / "run", reference_model=str(other_model_dir),
                     ref_logps_cache_dir=str(tmp_path / "cache"))
    first = build_trainer(recipe)
    assert first.reference_forward_batches == 2  # pi_t's pass and pi_ref's pass, one batch each
    assert first.accelerator._models == []  # the scoring model was dropped
    prev, ref = _columns(first.train_dataset, "prev"), _columns(first.train_dataset, "ref")
    for name, values in _plain_logps(other_model_dir, first).items():
        assert torch.allclose(ref[name], values, atol=1e-4)
    for name, values in _plain_logps(tiny_model_dir, first).items():
        assert torch.allclose(prev[name], values, atol=1e-4)

    second = build_trainer(recipe)  # what the loop's train phase does after its precompute phase
    assert second.reference_forward_batches == 0
    assert all(torch.equal(_columns(second.train_dataset, "ref")[n], ref[n]) for n in ref)
    second.train()
    assert second.state.log_history[0]["loss"] == pytest.approx(_step1_loss(prev, ref), rel=1e-4)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"inpo/residual", "inpo/target", "inpo/ref_margin", "inpo/prev_margin"} <= set(rows[0])


def test_missing_reference_model_is_a_usage_error_before_loading(tiny_model_dir, tmp_path, write_recipe):
    recipe = _recipe(write_recipe, tiny_model_dir, tmp_path / "run", reference_model=str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="reference_model"):
        build_trainer(recipe)
    assert not (tmp_path / "run").exists()
