"""The module map (posttrain/model_layout.py): one table finds the embedding, layers, MLPs and attention of each
supported family, the MLP parameter names of chosen layers, and refuses unknown families in one line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from posttrain.errors import UsageError
from posttrain.model_layout import (
    LAYOUTS,
    check_layers,
    decoder_layers,
    embedding_module,
    layer_module,
    layout_of,
    mlp_parameter_names,
)

SMALL = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 32}
CONFIGS = {"llama": ("LlamaConfig", SMALL), "qwen2": ("Qwen2Config", SMALL), "olmo": ("OlmoConfig", SMALL),
           "olmo2": ("Olmo2Config", SMALL),
           "gpt2": ("GPT2Config", {"vocab_size": 64, "n_embd": 16, "n_layer": 3, "n_head": 2, "n_positions": 32}),
           "gpt_neox": ("GPTNeoXConfig", {**SMALL, "rotary_pct": 1.0})}


def _model(model_type: str):
    import transformers
    from transformers import AutoModelForCausalLM

    class_name, kwargs = CONFIGS[model_type]
    return AutoModelForCausalLM.from_config(getattr(transformers, class_name)(**kwargs))


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_each_family_resolves_through_the_table(model_type):
    model = _model(model_type)
    layout = layout_of(model)
    assert layout is LAYOUTS[model_type]
    assert embedding_module(model) is model.get_input_embeddings()
    assert len(decoder_layers(model)) == 3
    assert "Attention" in type(layer_module(model, 1, "attn")).__name__
    assert "MLP" in type(layer_module(model, 1, "mlp")).__name__.upper()
    prefixes = tuple(f"{layout.layers}.{i}.{layout.mlp}." for i in (0, 2))
    expected = [name for name, _ in model.named_parameters() if name.startswith(prefixes)]
    assert expected and mlp_parameter_names(model, [2, 0, 2]) == expected


def test_mlp_parameter_names_are_exactly_those_layers_mlps():
    model = _model("llama")
    assert mlp_parameter_names(model, [1]) == [f"model.layers.1.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]


def test_a_peft_wrapper_names_its_own_parameters():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_model("llama"), LoraConfig(r=2, target_modules=["down_proj"]))
    names = mlp_parameter_names(model, [0])
    assert any("lora_A" in name for name in names) and all(name.startswith("base_model.") for name in names)
    assert set(names) <= {name for name, _ in model.named_parameters()}


def test_an_unknown_family_is_one_line_naming_it():
    with pytest.raises(UsageError, match="model type 'mamba' has no module map"):
        layout_of(SimpleNamespace(config=SimpleNamespace(model_type="mamba")))


@pytest.mark.parametrize("layers", [[3], [-1], [True], ["1"]])
def test_layers_outside_the_model_are_refused(layers):
    with pytest.raises(UsageError, match="not layer indices of this 3-layer model"):
        check_layers(_model("llama"), layers)
