"""Causal tracing (docs/methods.md §5.1): restoration, the noise rule, causality, and the suggested-layer rule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from posttrain.errors import UsageError
from posttrain.tracing import (
    TraceConfig,
    clean_run,
    embedding_std,
    noise_bank,
    restoration_masks,
    restored_probs,
    tokenize_fact,
    trace_fact,
    window_layers,
)
from posttrain.tracing_report import position_classes, suggested_layers

FACT = {"subject": "Vorel Tamsin", "prompt": "Vorel Tamsin lives in", "answer": "Pradu"}
PREFIXED = {"subject": "Vorel Tamsin", "prompt": "sort 12 Vorel Tamsin lives in", "answer": "Pradu"}


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from posttrain.models import load_causal_lm, load_tokenizer

    return load_causal_lm(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))


def _noise(model, fact, scale=1.0, num_noisy=4, seed=0):
    return noise_bank(fact, 0, model.config.hidden_size, scale, TraceConfig(num_noisy=num_noisy, seed=seed))


def test_subject_range_and_target_skip_whitespace_tokens(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    fact = tokenize_fact(tokenizer, FACT, 0)
    start, end = fact.subject
    assert tokenizer.decode(fact.ids[start:end]).strip() == "Vorel Tamsin"
    assert tokenizer.decode(fact.ids).startswith("Vorel Tamsin lives in")
    assert tokenizer.decode([fact.answer_id]).strip() and "Pradu".startswith(tokenizer.decode([fact.answer_id]).strip())


def test_restoring_every_layer_recovers_the_clean_probability(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    fact = tokenize_fact(tokenizer, FACT, 0)
    probs, clean = clean_run(model, fact, ("hidden",))
    num_layers, num_tokens = model.config.num_hidden_layers, len(fact.ids)
    everything = torch.ones(1, num_layers, num_tokens, dtype=torch.bool)
    nothing = torch.zeros(1, num_layers, num_tokens, dtype=torch.bool)
    noise = _noise(model, fact, scale=5.0)
    restored = restored_probs(model, fact, noise, clean["hidden"], "hidden", everything)[0]
    corrupted = restored_probs(model, fact, noise, clean["hidden"], "hidden", nothing)[0]
    assert restored == pytest.approx(probs[fact.answer_id].item(), abs=1e-6)
    assert abs(corrupted - restored) > 1e-4  # the noise did change the prediction


def test_noise_std_follows_the_rule_and_the_seed(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    other_relation = {**FACT, "prompt": "Vorel Tamsin works as"}
    facts = [tokenize_fact(tokenizer, FACT, 0), tokenize_fact(tokenizer, other_relation, 1)]
    start, end = facts[0].subject
    subject_rows = model.get_input_embeddings().weight[list(facts[0].ids[start:end])]
    assert embedding_std(model, facts) == pytest.approx(subject_rows.std().item(), rel=1e-6)  # one distinct subject
    assert embedding_std(model, facts, "vocabulary") == pytest.approx(
        model.get_input_embeddings().weight.std().item(), rel=1e-6)
    config = TraceConfig(noise_factor=3.0, num_noisy=400, seed=7)
    sigma = embedding_std(model, facts)
    bank = noise_bank(facts[0], 0, model.config.hidden_size, config.noise_factor * sigma, config)
    assert bank.shape == (400, end - start, model.config.hidden_size)
    assert bank.std().item() == pytest.approx(3.0 * sigma, rel=0.02)
    assert torch.equal(bank, noise_bank(facts[0], 0, model.config.hidden_size, 3.0 * sigma, config))
    assert not torch.equal(bank, noise_bank(facts[0], 1, model.config.hidden_size, 3.0 * sigma, config))


def test_restorations_that_cannot_matter_have_zero_effect(model_and_tokenizer):
    """Causality: tokens before the subject are never corrupted, and at the last layer only the last token's
    hidden state reaches the prediction."""
    model, tokenizer = model_and_tokenizer
    fact = tokenize_fact(tokenizer, PREFIXED, 0)
    start = fact.subject[0]
    assert start > 0
    config = TraceConfig(num_noisy=3, kinds=("hidden",))
    fact = replace(fact, answer_id=int(clean_run(model, fact, ())[0].argmax()))  # make the fact "known"
    record = trace_fact(model, fact, _noise(model, fact, 2.0, num_noisy=3), config)
    effect = torch.tensor(record["hidden"]) - record["p_corrupted"]
    assert effect[:start].abs().max() < 1e-6
    assert effect[:-1, -1].abs().max() < 1e-6
    assert record["hidden"][-1][-1] == pytest.approx(record["p_clean"], abs=1e-6)  # it carries everything


def test_window_layers_follow_rome():
    assert list(window_layers("hidden", 3, 8, 10)) == [3]
    assert list(window_layers("mlp", 3, 8, 10)) == list(range(8))
    assert list(window_layers("mlp", 5, 12, 10)) == list(range(0, 10))
    assert list(window_layers("attn", 4, 8, 2)) == [3, 4]
    assert list(window_layers("mlp", 0, 8, 3)) == [0, 1]
    masks = restoration_masks("mlp", 2, 4, 2)
    assert masks.shape == (8, 4, 2)
    assert masks[1 * 4 + 2].nonzero().tolist() == [[1, 1], [2, 1]]  # token 1, layer 2: layers 1-2 at token 1


def test_position_classes():
    assert position_classes(8, (0, 4)) == [[0], [1, 2], [3], [4], [5, 6], [7]]
    assert position_classes(6, (2, 3)) == [[2], [], [2], [3], [4], [5]]
    assert position_classes(4, (0, 3)) == [[0], [1], [2], [], [], [3]]  # one token follows: it is the last


@pytest.mark.parametrize(("effects", "share", "layers"), [
    ([0.0, 0.1, 0.6, 0.2, 0.1, 0.0], 0.5, [2]),
    ([0.0, 0.15, 0.6, 0.2, 0.05, 0.0], 0.9, [1, 2, 3]),
    ([0.3, 0.3, 0.0, 0.0, 0.2, 0.2], 0.5, [0, 1]),  # ties in length: the larger share, then the earlier
    ([0.25, 0.0, 0.25, -0.5, 0.25, 0.25], 0.5, [4, 5]),  # negative effects count as zero
    ([0.1, 0.1, 0.1, 0.1], 1.0, [0, 1, 2, 3]),
    ([-0.1, 0.0], 0.5, []),
])
def test_suggested_layers_on_hand_made_tables(effects, share, layers):
    assert suggested_layers(effects, share)[0] == layers


def test_bad_trace_settings_are_one_line_errors():
    for kwargs, message in [({"kinds": ("mlp", "ffn")}, "unknown trace kind"), ({"num_noisy": 0}, "num_noisy"),
                            ({"min_effect_share": 1.5}, "min_effect_share"), ({"noise_std_source": "x"}, "subjects")]:
        with pytest.raises(UsageError, match=message):
            TraceConfig(**kwargs)
