"""The transformers Generator (greedy, sampled, stop strings, logprobs), the backend-independent decoding
helpers, the resumable cache, and on-policy pair building. vLLM and OpenAI backends: tests/integration."""

from __future__ import annotations

import dataclasses

import pytest

from posttrain.data import proving_ground_rows
from posttrain.data.pairs import sample_preference_pairs
from posttrain.errors import UsageError
from posttrain.generation import Completion, SamplingParams, TransformersGenerator, generate_cached, load_generator
from posttrain.generation.cache import config_sha
from posttrain.generation.decoding import (
    cut_at_stop,
    finish_completion,
    request_seed,
    tokens_through_stop,
    top_logprob_map,
    trim_at,
)
from posttrain.io import end_torn_line
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


# --- shared types and decoding (posttrain.generation.types / decoding) ---


def test_sampling_params_are_frozen_hashable_and_normalise_stop():
    params = SamplingParams(stop=["|", "\n"], logprobs=20)
    assert params.stop == ("|", "\n") and SamplingParams(stop="|").stop == ("|",)
    assert hash(params) == hash(SamplingParams(stop=("|", "\n"), logprobs=20))
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.n = 2
    for bad in ({"n": 0}, {"max_new_tokens": 0}, {"temperature": -1.0}, {"logprobs": -1}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_completion_round_trips_through_a_dict():
    completion = Completion(3, "ab", [7, 8], [-0.5, -1.0], [{"a": -0.5}, {"b": -1.0, "c": -2.0}], "length")
    assert Completion.from_dict(completion.to_dict()) == completion


def test_stop_cut_is_before_the_earliest_stop_string_and_excludes_it():
    assert cut_at_stop("12|34\n5", ("\n", "|")) == ("12", True)
    assert cut_at_stop("1234", ("|",)) == ("1234", False)
    assert cut_at_stop("|x", ("|",)) == ("", True)
    assert cut_at_stop("abc", ("",)) == ("abc", False)  # an empty stop string never matches
    assert trim_at([5, 6, 2, 7], {2}) == ([5, 6], True) and trim_at([5, 6], {2}) == ([5, 6], False)


def test_tokens_through_stop_keeps_the_token_that_completes_a_multi_token_stop_string():
    pieces = {1: "ab", 2: "<", 3: "/", 4: "s>", 5: "z"}
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    assert tokens_through_stop([1, 2, 3, 4, 5, 5], decode, ("</s>",)) == 4
    assert tokens_through_stop([1, 5, 2], decode, ("b",)) == 1


def test_finish_completion_with_a_real_tokenizer(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    ids = tokenizer("12 34|56", add_special_tokens=False)["input_ids"]  # one token per character
    eos = {tokenizer.eos_token_id}
    stopped = finish_completion(4, ids, tokenizer, SamplingParams(stop=("|",)), eos)
    assert (stopped.prompt_index, stopped.text, stopped.finish_reason) == (4, "12 34", "stop")
    assert stopped.token_ids == ids[:6]  # through the '|' token, as vLLM reports it
    ended = finish_completion(0, ids[:2] + [tokenizer.eos_token_id] + ids[2:], tokenizer, SamplingParams(), eos)
    assert (ended.text, ended.token_ids, ended.finish_reason) == ("12", ids[:2], "stop")
    full = finish_completion(0, ids, tokenizer, SamplingParams(), eos)
    assert (full.text, full.finish_reason, full.logprobs) == ("12 34|56", "length", None)
    steps = [(-0.1 * (i + 1), [(token, -0.1 * (i + 1)), (tokenizer.eos_token_id, -5.0)]) for i, token in enumerate(ids)]
    scored = finish_completion(0, ids, tokenizer, SamplingParams(stop=("|",), logprobs=1), eos, steps)
    assert scored.logprobs == pytest.approx([-0.1 * (i + 1) for i in range(6)])
    assert scored.top_logprobs[0] == {"1": pytest.approx(-0.1), "<|eos|>": -5.0}


def test_top_logprobs_always_hold_the_sampled_token_and_keep_the_best_of_colliding_strings():
    text = {1: "a", 2: "b", 3: "b", 4: "c"}.__getitem__
    assert top_logprob_map((-3.0, [(1, -0.5), (2, -1.0)]), 4, text) == {"a": -0.5, "b": -1.0, "c": -3.0}
    assert top_logprob_map((-2.0, [(1, -0.5), (2, -1.0)]), 3, text) == {"a": -0.5, "b": -1.0}


def test_request_seeds_differ_across_prompts_and_leave_room_for_n_samples():
    seeds = [request_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000 and max(seeds) < 2**30
    assert request_seed(0, 5) == request_seed(0, 5) != request_seed(1, 5)


# --- resumable cache (posttrain.generation.cache) ---


class _Counting:
    """Forwards to a real generator and records which prompts it was asked for."""

    def __init__(self, generator):
        self.generator, self.model_id, self.asked = generator, "tiny", []

    def generate(self, prompts, params, on_result=None):
        self.asked += prompts
        return self.generator.generate(prompts, params, on_result=on_result)


class _CountingWithoutStreaming(_Counting):
    def generate(self, prompts, params):
        return super().generate(prompts, params)


@pytest.fixture(scope="module")
def tiny_generator(tiny_model_dir):
    return load_generator(str(tiny_model_dir), backend="transformers", batch_size=4)


def _same(results, expected) -> bool:
    """Equal tokens, text and finish reasons; log-probs equal up to float noise (batch padding changes sums)."""
    pairs = [(a, b) for ra, rb in zip(results, expected, strict=True) for a, b in zip(ra, rb, strict=True)]
    return all((a.prompt_index, a.text, a.token_ids, a.finish_reason) == (b.prompt_index, b.text, b.token_ids,
                                                                         b.finish_reason)
               and a.logprobs == pytest.approx(b.logprobs, abs=1e-5) for a, b in pairs)


@pytest.mark.parametrize("wrapper", [_Counting, _CountingWithoutStreaming])
def test_cache_resumes_generating_only_missing_prompts(tiny_generator, tmp_path, wrapper):
    prompts = [f"count {i}" for i in range(7)]
    params, cache = SamplingParams(max_new_tokens=5, logprobs=2), tmp_path / "gen.jsonl"
    expected = tiny_generator.generate(prompts, params)
    first = wrapper(tiny_generator)
    assert _same(generate_cached(first, prompts[:3], params, cache), expected[:3])
    with cache.open("a") as handle:
        handle.write('{"index": 3, "prompt_sha"')  # a writer killed mid-line
    second = wrapper(tiny_generator)
    assert _same(generate_cached(second, prompts, params, cache), expected)
    assert first.asked == prompts[:3] and second.asked == prompts[3:]
    third = wrapper(tiny_generator)
    assert _same(generate_cached(third, prompts, params, cache), expected) and third.asked == []
    assert all(line.endswith("}") for line in cache.read_text().splitlines())  # the torn line was dropped


def test_cache_regenerates_a_changed_prompt_and_refuses_other_params_or_model(tiny_generator, tmp_path):
    params, cache = SamplingParams(max_new_tokens=4), tmp_path / "gen.jsonl"
    generate_cached(_Counting(tiny_generator), ["a", "b"], params, cache)
    changed = _Counting(tiny_generator)
    generate_cached(changed, ["a", "c"], params, cache)
    assert changed.asked == ["c"]
    with pytest.raises(UsageError, match="other sampling params or another model"):
        generate_cached(_Counting(tiny_generator), ["a", "b"], SamplingParams(max_new_tokens=5), cache)
    with pytest.raises(UsageError, match="another model"):
        generate_cached(_Counting(tiny_generator), ["a", "b"], params, cache, model_id="other-model")
    assert config_sha(params, "m") != config_sha(params, "n") != config_sha(SamplingParams(seed=1), "n")


def test_end_torn_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"b"')
    end_torn_line(path)
    assert path.read_text() == '{"a": 1}\n'
    path.write_text('{"b"')
    end_torn_line(path)
    assert path.read_text() == ""


# --- load_generator errors ---


def test_load_generator_rejects_bad_input_with_one_line(tiny_model_dir, tiny_generator, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_generator(str(tmp_path / "no-such-model"), backend="transformers")
    with pytest.raises(UsageError, match="does not exist"):
        load_generator(str(tmp_path / "no-such-model"), backend="vllm")
    with pytest.raises(UsageError, match="unknown generation backend"):
        load_generator(str(tiny_model_dir), backend="tgi")
    with pytest.raises(UsageError, match="needs base_url"):
        load_generator("served-model", backend="openai")
    with pytest.raises(UsageError, match="adapter_config.json"):
        load_generator(str(tiny_model_dir), backend="transformers", adapter=str(tmp_path))
    nameless = _Counting(tiny_generator)
    nameless.model_id = None
    with pytest.raises(UsageError, match="model_id"):
        generate_cached(nameless, ["a"], SamplingParams(), tmp_path / "c.jsonl")


def test_transformers_stop_and_logprobs_are_consistent(tiny_generator):
    prompts = ["hello world", "sort 123", "count 7"]
    plain = tiny_generator.generate(prompts, SamplingParams(max_new_tokens=8, logprobs=3))
    for [completion] in plain:
        assert len(completion.logprobs) == len(completion.top_logprobs) == len(completion.token_ids)
        # top-3 plus the sampled token, fewer when ids decode to one string (byte pieces all show as U+FFFD)
        assert all(1 <= len(top) <= 4 and max(top.values()) <= 0 for top in completion.top_logprobs)
        for token, logprob, top in zip(completion.token_ids, completion.logprobs, completion.top_logprobs):
            assert top[tiny_generator.tokenizer.decode([token])] == logprob == pytest.approx(max(top.values()))
        assert completion.finish_reason == "length"  # the random model never says EOS in 8 tokens
    stop = plain[0][0].text[3]  # a character the greedy output really contains
    [[stopped], *_] = tiny_generator.generate(prompts, SamplingParams(max_new_tokens=8, logprobs=3, stop=(stop,)))
    assert stopped.text == plain[0][0].text[:plain[0][0].text.index(stop)] and stopped.finish_reason == "stop"
    assert stopped.token_ids == plain[0][0].token_ids[:len(stopped.token_ids)]
    assert stopped.logprobs == pytest.approx(plain[0][0].logprobs[:len(stopped.token_ids)])
