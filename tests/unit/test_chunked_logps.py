"""Chunked completion log-probs (docs/methods.md §9) equal the plain path: values and gradients, fp32, to 1e-5."""

from __future__ import annotations

import pytest
import torch

from posttrain.trainers.chunked_logps import chunked_token_logps
from posttrain.trainers.logprobs import PAIR, SequenceCollator, sequence_logps

from ..conftest import CPU_SETTINGS

NAMES = [s.name for s in PAIR]


def _full_logits_logps(hidden, weight, bias, targets, softcap=None):
    """Reference: the whole [tokens x vocabulary] logits, then log-softmax."""
    logits = hidden @ weight.T + bias
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_chunks_equal_full_logits_in_value_and_gradient(chunk_size, softcap):
    torch.manual_seed(0)
    leaves = [torch.randn(10, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True),
              torch.randn(50, requires_grad=True)]
    targets, weights = torch.randint(0, 50, (10,)), torch.randn(10)
    expected = _full_logits_logps(*leaves, targets, softcap)
    expected_grads = torch.autograd.grad((expected * weights).sum(), leaves)
    got, entropy, is_top1 = chunked_token_logps(*leaves, targets, chunk_size, softcap)
    grads = torch.autograd.grad((got * weights).sum(), leaves)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    for grad, expected_grad in zip(grads, expected_grads):  # hidden states, LM head weight, bias
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=0)
    assert entropy.shape == is_top1.shape == (10,)


def _examples(seed: int = 0, rows: int = 3) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)

    def ids(low, high):
        return torch.randint(3, 300, (int(torch.randint(low, high, (1,), generator=generator)),),
                             generator=generator).tolist()

    return [{"prompt_ids": ids(2, 9), "chosen_ids": ids(1, 12), "rejected_ids": ids(1, 12)} for _ in range(rows)]


def _model(model_dir, lora: bool):
    from trl.trainer.utils import add_fused_lm_head

    from posttrain.models import load_causal_lm

    model = load_causal_lm(str(model_dir))
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return model


def _logps_and_grads(model, batch, chunk_size):
    model.zero_grad()
    scored = sequence_logps(model, batch, NAMES, chunk_size)
    (scored.logps["chosen"] - 0.5 * scored.logps["rejected"]).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return scored, grads


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_engine_chunked_path_equals_plain_path(tiny_model_dir, lora):
    model = _model(tiny_model_dir, lora)
    batch = SequenceCollator(0, PAIR)(_examples())
    plain, plain_grads = _logps_and_grads(model, batch, None)
    for chunk_size in (1, 7, 4096):
        chunked, grads = _logps_and_grads(model, batch, chunk_size)
        for name in NAMES:
            torch.testing.assert_close(chunked.logps[name], plain.logps[name], atol=1e-5, rtol=0)
            torch.testing.assert_close(chunked.token_logps[name], plain.token_logps[name], atol=1e-5, rtol=0)
        assert grads.keys() == plain_grads.keys() and (not lora or all("lora_" in name for name in grads))
        for name, grad in grads.items():
            torch.testing.assert_close(grad, plain_grads[name], atol=1e-5, rtol=0, msg=name)
        mask = torch.cat([chunked.masks[n] for n in NAMES]).bool()
        torch.testing.assert_close(chunked.outputs.entropy[mask], plain.outputs.entropy[mask], atol=1e-5, rtol=0)
        assert torch.equal(chunked.outputs.is_top1[mask], plain.outputs.is_top1[mask])


def test_model_without_chunk_size_keeps_its_forward(tiny_model_dir):
    model = _model(tiny_model_dir, lora=False)
    batch = SequenceCollator(0, PAIR)(_examples())
    sequence_logps(model, batch, NAMES, chunk_size=5)  # patches the head
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (*batch["input_ids"].shape, model.config.vocab_size)


def test_chunk_size_with_a_trl_only_loss_is_refused(tmp_path):
    """TRL's own losses run their own forward, which would silently ignore the chunk size."""
    from posttrain.trainers.dpo import DPOConfig

    with pytest.raises(ValueError, match=r"^logps_chunk_size works with the engine's sigmoid loss only, not "
                                         r"loss_type \['ipo'\]; set logps_chunk_size 0 or drop those settings$"):
        DPOConfig(output_dir=str(tmp_path), loss_type=["ipo"], logps_chunk_size=8, **CPU_SETTINGS)
    DPOConfig(output_dir=str(tmp_path), loss_type=["ipo"], logps_chunk_size=0, **CPU_SETTINGS)  # plain path: fine
