"""posttrain.models.tune_lora_layers: PEFT's adapter-dtype and input-cast options (docs/methods.md §9)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import Qwen2Config, Qwen2ForCausalLM

from posttrain.models import tune_lora_layers


def bf16_lora_model():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = get_peft_model(Qwen2ForCausalLM(config).to(torch.bfloat16),
                           LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    for name, param in model.named_parameters():  # B starts at zero: make the adapters contribute
        if "lora_B" in name:
            torch.nn.init.normal_(param)
    return model


def tuner_layers(model):
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def forward_under_autocast(model, ids):
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.profiler.profile() as profiler:
        logits = model(input_ids=ids).logits
    copies = sum(1 for e in profiler.events() if e.name == "aten::_to_copy")
    return logits, copies


def test_input_casts_off_under_autocast_give_the_same_output_with_fewer_copies():
    model, ids = bf16_lora_model(), torch.arange(16).reshape(2, 8)
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}  # PEFT's upcast
    before, copies_before = forward_under_autocast(model, ids)
    tune_lora_layers(model, autocast_forward=True)
    after, copies_after = forward_under_autocast(model, ids)
    assert all(not layer.cast_input_dtype_enabled for layer in tuner_layers(model))
    assert torch.equal(before, after)  # bf16 -> fp32 -> bf16 is lossless, so dropping the round trip changes nothing
    assert copies_after < copies_before


def test_input_casts_stay_where_a_forward_may_run_without_autocast():
    model = bf16_lora_model()
    tune_lora_layers(model, autocast_forward=False)
    assert all(layer.cast_input_dtype_enabled for layer in tuner_layers(model))
    model(input_ids=torch.arange(8).reshape(1, 8))  # no autocast, fp32 adapters on bf16 activations: still runs


@pytest.mark.parametrize("autocast_forward", [True, False])
def test_adapters_in_the_base_dtype_need_no_casts_at_all(autocast_forward):
    model = bf16_lora_model()
    tune_lora_layers(model, autocast_forward=autocast_forward, autocast_adapter_dtype=False)
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.bfloat16}
    assert all(not layer.cast_input_dtype_enabled for layer in tuner_layers(model))
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
