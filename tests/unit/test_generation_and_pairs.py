"""The transformers Generator (greedy and sampled) and on-policy pair building."""

from __future__ import annotations

from posttrain.data import proving_ground_rows
from posttrain.data.pairs import sample_preference_pairs
from posttrain.generation import Completion, SamplingParams, TransformersGenerator
from posttrain.models import load_causal_lm, load_tokenizer


def test_greedy_is_deterministic_and_batch_independent(tiny_model_dir):
    generator = TransformersGenerator(load_causal_lm(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)),
                                      batch_size=3)
    prompts = [row["prompt"] for row in proving_ground_rows("sort8/sft", n=5)] + ["raw text prompt"]
    params = SamplingParams(max_new_tokens=6)
    first = generator.generate(prompts, params)
    assert [len(c) for c in first] == [1] * 6
    assert all(len(c[0].token_ids) <= 6 for c in first)
    one_by_one = TransformersGenerator(generator.model, generator.tokenizer, batch_size=1).generate(prompts, params)
    assert [c[0].token_ids for c in first] == [c[0].token_ids for c in one_by_one]


def test_sampling_returns_n_per_prompt_and_is_seeded(tiny_model_dir):
    generator = TransformersGenerator(load_causal_lm(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)))
    prompts = [row["prompt"] for row in proving_ground_rows("sort8/sft", n=4)]
    params = SamplingParams(n=3, temperature=1.0, top_k=10, max_new_tokens=5, seed=7)
    a, b = generator.generate(prompts, params), generator.generate(prompts, params)
    assert [len(c) for c in a] == [3] * 4
    assert [[c.text for c in row] for row in a] == [[c.text for c in row] for row in b]
    assert all(c.prompt_index == i for i, row in enumerate(a) for c in row)


class _ScriptedGenerator:
    def __init__(self, outputs):
        self.outputs = outputs

    def generate(self, prompts, params):
        return [[Completion(i, text) for text in self.outputs[i]] for i in range(len(prompts))]


def test_pairs_keep_only_mixed_prompts_and_order_correct_first():
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": "1"} for i in range(3)]
    scripted = _ScriptedGenerator([["1", "1"], ["2", "3"], ["1", "2"]])  # easy, hard, mixed
    pairs, stats = sample_preference_pairs(scripted, rows, lambda out, ans: float(out == ans),
                                           SamplingParams(n=2, temperature=1.0))
    assert stats == {"prompts": 3, "all_correct": 1, "none_correct": 1, "mixed": 1, "pairs": 1}
    assert pairs[0]["chosen"][0]["content"] == "1" and pairs[0]["rejected"][0]["content"] == "2"
    assert pairs[0]["prompt"] == rows[2]["prompt"]
