"""A Mixture-of-Experts policy keeps its router load-balancing loss in the DPO engine, as TRL's DPOTrainer adds it
(`router_aux_loss_coef * aux_loss`, logged as `aux_loss`; docs/methods.md §9), on the plain, chunked and packed
paths."""

from __future__ import annotations

import pytest
import torch
import trl

from posttrain.data import load_any_dataset
from posttrain.models import load_causal_lm, load_tokenizer
from posttrain.trainers.dpo import DPOConfig, DPOTrainer
from posttrain.trainers.rpo import RPOConfig, RPOTrainer

from ..conftest import CPU_SETTINGS

ROWS = 4


@pytest.fixture(scope="module")
def moe_model_dir(tiny_model_dir, tmp_path_factory):
    """A tiny Mixtral (hidden 32, 2 layers, 4 experts, top-2) over the session tokenizer, saved once."""
    from transformers import MixtralConfig, MixtralForCausalLM

    tokenizer = load_tokenizer(str(tiny_model_dir))
    config = MixtralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                           num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.02,
                           max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("moe") / "tiny-mixtral"
    MixtralForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _model(model_dir, output_router_logits: bool = True):
    model = load_causal_lm(str(model_dir))
    model.config.output_router_logits = output_router_logits
    return model


def _args(config_class, tmp_path, **config):
    return config_class(output_dir=str(tmp_path / "out"), per_device_train_batch_size=ROWS, max_length=64, seed=0,
                        precompute_ref_log_probs=False, **CPU_SETTINGS, **config)


def _ours(model_dir, tmp_path, trainer_class=DPOTrainer, config_class=DPOConfig, output_router_logits=True, **config):
    return trainer_class(model=_model(model_dir, output_router_logits), args=_args(
        config_class, tmp_path, ref_logps_cache_dir="", **config), train_dataset=_data(),
        processing_class=load_tokenizer(str(model_dir)))


def _trls(model_dir, tmp_path, output_router_logits=True, **config):
    return trl.DPOTrainer(model=_model(model_dir, output_router_logits), args=_args(trl.DPOConfig, tmp_path, **config),
                          train_dataset=_data(), processing_class=load_tokenizer(str(model_dir)))


def _data():
    return load_any_dataset("pg:sort8/preference", "train", num_examples=ROWS)


def _loss(trainer) -> tuple[float, dict]:
    """The loss of the first batch, and the metrics that one call logged."""
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(ROWS)]))
    mode = "train" if trainer.model.training else "eval"
    trainer._metrics[mode].clear()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    return loss, {name: values[-1] for name, values in trainer._metrics[mode].items()}


@pytest.mark.parametrize("output_router_logits", [True, False])
def test_engine_loss_equals_trls_with_the_router_aux_loss(moe_model_dir, tmp_path, output_router_logits):
    """TRL 1.16 adds the loss whenever the config has the field (it asks for router logits in the forward), whatever
    its value: so does the engine."""
    ours = _ours(moe_model_dir, tmp_path, output_router_logits=output_router_logits)
    theirs = _trls(moe_model_dir, tmp_path / "trl", output_router_logits=output_router_logits)
    assert ours.engine_loss and ours.aux_loss_enabled and ours.router_aux_loss_coef == 0.02
    (loss, metrics), (trl_loss, trl_metrics) = _loss(ours), _loss(theirs)
    assert metrics["aux_loss"] > 0.1
    assert metrics["aux_loss"] == pytest.approx(trl_metrics["aux_loss"], abs=1e-6)
    assert loss == pytest.approx(trl_loss, abs=1e-5)
    dpo_only = loss - 0.02 * metrics["aux_loss"]
    assert abs(loss - dpo_only) > 1e-3  # the aux part is a real share of the loss


def test_a_zero_coefficient_leaves_no_aux_part(moe_model_dir, tmp_path):
    with_aux, without = _ours(moe_model_dir, tmp_path), _ours(moe_model_dir, tmp_path / "0", router_aux_loss_coef=0.0)
    assert not without.aux_loss_enabled
    (loss, metrics), (plain_loss, plain_metrics) = _loss(with_aux), _loss(without)
    assert "aux_loss" not in plain_metrics
    assert plain_loss == pytest.approx(loss - 0.02 * metrics["aux_loss"], abs=1e-6)
    assert plain_loss == pytest.approx(_loss(_trls(moe_model_dir, tmp_path / "trl", router_aux_loss_coef=0.0))[0],
                                       abs=1e-5)


@pytest.mark.parametrize("switch", [{"logps_chunk_size": 5}, {"padding_free": True}], ids=["chunked", "packed"])
def test_chunked_and_packed_paths_keep_the_aux_loss(moe_model_dir, tmp_path, switch):
    """Exact for chunks; a packed row (no pad tail here) averages over the same real tokens as the padded mask."""
    (loss, metrics), (plain_loss, plain_metrics) = (_loss(_ours(moe_model_dir, tmp_path / "on", **switch)),
                                                    _loss(_ours(moe_model_dir, tmp_path / "off")))
    assert metrics["aux_loss"] == pytest.approx(plain_metrics["aux_loss"], abs=1e-5)
    assert loss == pytest.approx(plain_loss, abs=1e-5)


def test_rpo_goes_through_the_engine_and_adds_the_aux_loss(moe_model_dir, tmp_path):
    with_aux = _loss(_ours(moe_model_dir, tmp_path, RPOTrainer, RPOConfig))
    without = _loss(_ours(moe_model_dir, tmp_path / "0", RPOTrainer, RPOConfig, router_aux_loss_coef=0.0))
    assert without[0] == pytest.approx(with_aux[0] - 0.02 * with_aux[1]["aux_loss"], abs=1e-6)


def test_the_policy_gradient_reaches_the_routers_through_the_aux_loss(moe_model_dir, tmp_path):
    """The reference forward adds nothing: only the policy's aux loss is in the graph (chunked path here)."""
    grads = []
    for coef in (0.0, 1.0):
        trainer = _ours(moe_model_dir, tmp_path / str(coef), logps_chunk_size=5, router_aux_loss_coef=coef)
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(ROWS)]))
        trainer.compute_loss(trainer.model, batch).backward()
        grads.append(trainer.model.model.layers[0].mlp.gate.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1], atol=1e-6)


def test_unlearning_adds_the_aux_loss(moe_model_dir, tmp_path, write_recipe):
    """UnlearnTrainer runs its own forward and loss: the router loss is added there too, as TRL's SFTTrainer adds it."""
    from posttrain.recipe import parse_recipe
    from posttrain.train import build_trainer

    def trainer(name: str, **extra):
        values = {"method": "unlearn", "model_name_or_path": str(moe_model_dir), "dataset_name": "pg:facts/all",
                  "dataset_num_examples": 96, "output_dir": str(tmp_path / name), "per_device_train_batch_size": 8,
                  "max_steps": 1, "max_length": 32, "unlearn_layers": "full", "unlearn_loss": "gd", "seed": 0,
                  **CPU_SETTINGS, **extra}
        return build_trainer(parse_recipe(["--config", write_recipe(values, name=f"{name}.yaml")]))

    with_aux, without = trainer("aux"), trainer("no-aux", router_aux_loss_coef=0.0)
    batch = [with_aux.train_dataset[i] for i in range(8)]
    losses = []
    for t in (with_aux, without):
        t.model.train()  # the training branch (loaded models start in eval mode); no dropout or router jitter here
        t._metrics["train"].clear()
        with torch.no_grad():
            losses.append(t.compute_loss(t.model, t._prepare_inputs(t.data_collator(batch))).item())
    aux = with_aux._metrics["train"]["aux_loss"][-1]
    assert aux > 0.1 and "aux_loss" not in without._metrics["train"]
    assert losses[0] == pytest.approx(losses[1] + 0.02 * aux, abs=1e-5)
