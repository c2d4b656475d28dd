"""RPOTrainer against TRL's DPOTrainer and an independent forward pass, and the reference log-prob cache."""

from __future__ import annotations

import pytest
import torch
import trl

from posttrain.data import load_any_dataset
from posttrain.losses import rpo_loss
from posttrain.models import load_causal_lm, load_tokenizer
from posttrain.trainers.dpo import DPOConfig, DPOTrainer
from posttrain.trainers.rpo import RPOConfig, RPOTrainer

from ..conftest import CPU_SETTINGS

ROWS = 16


def _trainer(trainer_class, config_class, model_dir, tmp_path, cache_dir, peft_config=None, **config):
    config = {"max_length": 64, "seed": 0, **config}
    args = config_class(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, **CPU_SETTINGS, **config)
    if cache_dir is not None:
        args.ref_logps_cache_dir = str(cache_dir)
    data = load_any_dataset("pg:sort8/preference", "train", num_examples=ROWS)
    return trainer_class(model=load_causal_lm(str(model_dir)), args=args, train_dataset=data,
                         processing_class=load_tokenizer(str(model_dir)), peft_config=peft_config)


def _loss(trainer) -> float:
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(8)]))
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


def _rpo(model_dir, tmp_path, **config):
    return _trainer(RPOTrainer, RPOConfig, model_dir, tmp_path, tmp_path / "cache", beta=0.1, **config)


def _trl_dpo(model_dir, tmp_path, **config):
    """TRL's own trainer with a live reference model (no precompute, no posttrain code)."""
    return _trainer(trl.DPOTrainer, trl.DPOConfig, model_dir, tmp_path, None, beta=0.1, **config)


def test_rpo_with_eta_zero_equals_trl_dpo(tiny_model_dir, tmp_path):
    ours = _loss(_rpo(tiny_model_dir, tmp_path, rpo_eta=0.0))
    assert ours == pytest.approx(_loss(_trl_dpo(tiny_model_dir, tmp_path)), abs=1e-6)


def test_rpo_token_normalisation_equals_trl_sigmoid_plus_sft(tiny_model_dir, tmp_path):
    ours = _loss(_rpo(tiny_model_dir, tmp_path, rpo_eta=0.5, sft_normalization="token"))
    theirs = _loss(_trl_dpo(tiny_model_dir, tmp_path, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]))
    assert ours == pytest.approx(theirs, abs=1e-6)


def _independent_logps(trainer, batch):
    """Per-token completion log-probs from a plain forward pass (no TRL code), batch = [chosen; rejected]."""
    logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].float()
    return token_logps * mask, mask


@pytest.mark.parametrize("normalization", ["sum", "mean"])
def test_rpo_trainer_loss_equals_the_pure_loss_on_an_independent_forward(tiny_model_dir, tmp_path, normalization):
    trainer = _rpo(tiny_model_dir, tmp_path, rpo_eta=0.7, sft_normalization=normalization)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(8)]))
    with torch.no_grad():
        token_logps, mask = _independent_logps(trainer, batch)
        chosen, rejected = token_logps.sum(dim=1).chunk(2)
        # Before any step the policy is the reference, so the cached reference log-probs equal the policy's.
        assert torch.allclose(batch["ref_chosen_logps"], chosen, atol=1e-5)
        expected, _, _ = rpo_loss(chosen, rejected, batch["ref_chosen_logps"], batch["ref_rejected_logps"],
                                  token_logps.chunk(2)[0], mask.chunk(2)[0], 0.1, 0.7, normalization)
        assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(expected.item(), abs=1e-5)


def test_reference_cache_is_reused_across_runs_and_methods(tiny_model_dir, tmp_path, capsys):
    first = _rpo(tiny_model_dir, tmp_path)
    assert first.reference_forward_batches == ROWS // 8 and first.ref_model is None
    assert "computed and cached at" in capsys.readouterr().out

    second = _trainer(DPOTrainer, DPOConfig, tiny_model_dir, tmp_path, tmp_path / "cache")  # another DPO-family method
    assert second.reference_forward_batches == 0 and second.ref_model is None
    assert "loaded from cache" in capsys.readouterr().out
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        assert second.train_dataset[column] == first.train_dataset[column]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1

    shorter = _rpo(tiny_model_dir, tmp_path, max_length=18)  # truncating the completions changes the key
    assert shorter.reference_forward_batches > 0
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_reference_cache_key_follows_the_weights(tiny_model_dir, tmp_path):
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    _rpo(tiny_model_dir, tmp_path)
    other = make_tiny_model(tmp_path / "other", tokenizer_corpus(), seed=1)
    assert _rpo(other, tmp_path).reference_forward_batches > 0


def test_rpo_config_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="sft_normalization must be one of sum, mean, token"):
        RPOConfig(output_dir=str(tmp_path), sft_normalization="avg", **CPU_SETTINGS)
    with pytest.raises(ValueError, match=r"loss_type must be \[sigmoid\]"):
        RPOConfig(output_dir=str(tmp_path), loss_type=["sigmoid", "sft"], **CPU_SETTINGS)


def test_lora_runs_share_the_cache_whatever_the_adapter_init(tiny_model_dir, tmp_path):
    """Under LoRA the reference is the adapter-disabled base, so a fresh adapter's random init is not in the key."""
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    first = _rpo(tiny_model_dir, tmp_path, peft_config=lora, seed=1)
    second = _rpo(tiny_model_dir, tmp_path, peft_config=lora, seed=2)
    adapters = [{n: p for n, p in t.model.named_parameters() if "lora_A" in n} for t in (first, second)]
    assert any(not torch.equal(adapters[0][n], adapters[1][n]) for n in adapters[0])  # different adapter inits
    assert first.reference_forward_batches == ROWS // 8 and second.reference_forward_batches == 0
    # The cached values are the base model's: the same as a full fine-tuning run computes.
    full = _trainer(DPOTrainer, DPOConfig, tiny_model_dir, tmp_path, tmp_path / "full-cache")
    assert torch.allclose(torch.tensor(second.train_dataset["ref_chosen_logps"]),
                          torch.tensor(full.train_dataset["ref_chosen_logps"]), atol=1e-5)
