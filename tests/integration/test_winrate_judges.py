"""Reward-model and LLM judges on real tiny models (a from-config reward model; the tiny causal LM as a judge)."""

from __future__ import annotations

import pytest

from posttrain.judges import LLMJudge, RewardModelJudge, label_probability
from posttrain.preference_scale import sigmoid


def save_tiny_reward_model(tokenizer_dir, path):
    """A from-config one-logit LlamaForSequenceClassification with the tiny tokenizer, saved to `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from posttrain.models import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=128, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory):
    return save_tiny_reward_model(tiny_model_dir, tmp_path_factory.mktemp("reward") / "tiny-rm")


def test_reward_judge_preference_is_the_sigmoid_of_the_score_gap(reward_model_dir):
    judge = RewardModelJudge.from_pretrained(str(reward_model_dir), batch_size=2)
    instructions = ["sort 31", "sort 9912", "sort 5"]
    references, outputs = ["13", "1299", "5"], ["31", "1299", "5 5 5 5 5"]
    annotations = judge.annotate(instructions, references, outputs)
    model_scores = judge.scores(instructions, outputs)
    reference_scores = judge.scores(instructions, references)
    for annotation, m, r in zip(annotations, model_scores, reference_scores):
        assert annotation.preference == pytest.approx(1 + sigmoid(m - r))
        assert annotation.raw == {"score_model": pytest.approx(m), "score_reference": pytest.approx(r)}
    assert annotations[1].preference == pytest.approx(1.5)  # identical outputs tie
    assert len({round(a.preference, 6) for a in annotations}) == 3  # the tiny model does tell outputs apart


def test_reward_scores_do_not_depend_on_padding(reward_model_dir):
    judge = RewardModelJudge.from_pretrained(str(reward_model_dir), batch_size=4)
    batched = judge.scores(["sort 31", "sort 987654"], ["13", "456789 and more text to pad the other row"])
    alone = judge.scores(["sort 31"], ["13"])
    assert batched[0] == pytest.approx(alone[0], abs=1e-5)


def test_llm_judge_reads_the_tiny_models_label_logprobs(tiny_model_dir):
    from posttrain.generation import SamplingParams, TransformersGenerator
    from posttrain.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    generator = TransformersGenerator(load_causal_lm(str(tiny_model_dir)), tokenizer)
    vocabulary = len(tokenizer)
    # top log-probs over the whole vocabulary, and digits are single tokens: labels 1/2 are always scoreable
    judge = LLMJudge(generator, seed=0, labels=("1", "2"), top_logprobs=vocabulary)
    instructions = [f"sort {d}" for d in ("8123", "4471", "90210", "5553", "1")]
    references = ["1238", "1447", "01229", "3555", "1"]
    outputs = ["8321", "1447", "00129", "5", "11"]
    annotations = judge.annotate(instructions, references, outputs)
    prompts = [judge.prompt(i, o, r) if a.swapped else judge.prompt(i, r, o)
               for i, r, o, a in zip(instructions, references, outputs, annotations)]
    results = generator.generate(prompts, SamplingParams(max_new_tokens=1, logprobs=vocabulary))
    top = [completions[0].top_logprobs[0] for completions in results]
    for annotation, step in zip(annotations, top):
        p1, p2 = label_probability(step, "1"), label_probability(step, "2")
        assert not annotation.failed and p1 > 0 and p2 > 0
        assert annotation.preference == pytest.approx(1 + (p1 if annotation.swapped else p2) / (p1 + p2))


def test_llm_judge_fails_when_no_label_is_a_likely_token(tiny_model_dir):
    from posttrain.generation import TransformersGenerator
    from posttrain.models import load_causal_lm, load_tokenizer

    generator = TransformersGenerator(load_causal_lm(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)))
    judge = LLMJudge(generator, labels=("first-output", "second-output"))  # never one token of the tiny vocabulary
    annotations = judge.annotate(["sort 21", "sort 3"], ["12", "3"], ["21", "3"])
    assert all(a.failed and a.preference is None and a.raw["top_logprobs"] for a in annotations)
