"""The tiny offline model: digits are single tokens, prompts are exact prefixes, vLLM-compatible head_dim."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.data import proving_ground_rows


def test_saved_model_and_tokenizer_load_by_path(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.head_dim == 64 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer)
    assert 0.3e6 < model.num_parameters() < 1e6
    assert {tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token} == {"<|pad|>", "<|bos|>", "<|eos|>"}
    with torch.no_grad():
        logits = model(torch.tensor([[tokenizer.bos_token_id, 5, 6]])).logits
    assert logits.shape == (1, 3, len(tokenizer))


def test_digits_are_single_tokens_and_prompt_is_a_prefix(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert all(len(tokenizer.tokenize(d)) == 1 for d in "0123456789")
    row = proving_ground_rows("sort8/sft", n=1)[0]
    prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                         return_dict=True)["input_ids"]
    assert full[: len(prompt)] == prompt
    answer = full[len(prompt):]
    assert answer[-1] == tokenizer.eos_token_id and len(answer) == 8 + 1
    assert tokenizer.decode(answer, skip_special_tokens=True) == row["answer"]


def test_tiny_models_are_reproducible(tmp_path):
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    a = make_tiny_model(tmp_path / "a", tokenizer_corpus(), seed=1, family="qwen2")
    b = make_tiny_model(tmp_path / "b", tokenizer_corpus(), seed=1, family="qwen2")
    ma, mb = AutoModelForCausalLM.from_pretrained(a), AutoModelForCausalLM.from_pretrained(b)
    assert type(ma).__name__ == "Qwen2ForCausalLM"
    assert all(torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values()))
    assert not (tmp_path / "a.partial").exists()
