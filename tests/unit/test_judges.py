"""LLM-judge logic with a fake generator: prompt order randomised and undone, log-prob preference math, failures;
the resumable annotation cache."""

from __future__ import annotations

import math

import pytest

from posttrain.errors import UsageError
from posttrain.evaluation.winrate import winrate_metrics
from posttrain.generation import Completion, SamplingParams
from posttrain.judges import LLMJudge, RuleJudge, annotate_cached, annotation_key, label_probability
from posttrain.preference_scale import MODEL_WINS, REFERENCE_WINS, TIE


class FakeGenerator:
    """Answers every judge prompt with the top log-probs `choose(prompt_text)` returns; records the calls."""

    def __init__(self, choose):
        self.choose, self.calls = choose, []

    def generate(self, prompts, params: SamplingParams):
        self.calls.append((prompts, params))
        out = []
        for index, prompt in enumerate(prompts):
            top = self.choose(prompt[-1]["content"])
            text = max(top, key=top.get) if top else ""
            out.append([Completion(index, text, [0], [top.get(text, 0.0)], [top])])
        return out


def prefers_good(text: str) -> dict[str, float]:
    """A judge that puts 0.9 on whichever label shows the output 'GOOD'."""
    good_first = text.index("GOOD") < text.index("BAD")
    return {"a": math.log(0.9 if good_first else 0.1), "b": math.log(0.1 if good_first else 0.9), "x": -5.0}


def examples(n: int):
    return [f"instruction {k}" for k in range(n)], [f"BAD {k}" for k in range(n)], [f"GOOD {k}" for k in range(n)]


def test_swap_is_undone_so_the_better_output_wins_in_either_order():
    judge = LLMJudge(FakeGenerator(prefers_good), seed=3)
    instructions, references, outputs = examples(40)
    annotations = judge.annotate(instructions, references, outputs)
    swaps = [a.swapped for a in annotations]
    assert 5 < sum(swaps) < 35  # both orders are used
    assert all(a.preference == pytest.approx(1.9) for a in annotations)
    # the reference as the good one: every preference flips to the reference
    flipped = judge.annotate(instructions, outputs, references)
    assert all(a.preference == pytest.approx(1.1) for a in flipped)


def test_prompt_order_follows_the_recorded_swap():
    generator = FakeGenerator(prefers_good)
    judge = LLMJudge(generator, seed=0)
    instructions, references, outputs = examples(20)
    annotations = judge.annotate(instructions, references, outputs)
    for prompt, annotation, output in zip(generator.calls[0][0], annotations, outputs):
        text = prompt[-1]["content"]
        assert (text.index(output) < text.index("BAD")) == annotation.swapped
    assert [a.swapped for a in annotations] == [judge.is_swapped(*x) for x in zip(instructions, references, outputs)]


def test_swaps_are_reproducible_and_depend_on_the_seed():
    instructions, references, outputs = examples(64)

    def draw(seed):
        return [LLMJudge(None, seed=seed).is_swapped(*x) for x in zip(instructions, references, outputs)]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_judge_asks_for_one_greedy_token_with_top_logprobs():
    generator = FakeGenerator(prefers_good)
    LLMJudge(generator, top_logprobs=20).annotate(*examples(2))
    params = generator.calls[0][1]
    assert (params.n, params.temperature, params.max_new_tokens, params.logprobs) == (1, 0.0, 1, 20)


def test_preference_is_the_normalised_probability_of_the_models_label():
    judge = LLMJudge(FakeGenerator(lambda _: {"a": math.log(0.2), "b": math.log(0.6), "c": math.log(0.2)}))
    for annotation in judge.annotate(*examples(30)):
        # the model's output carries label b unless swapped
        expected = 1 + (0.2 if annotation.swapped else 0.6) / 0.8
        assert annotation.preference == pytest.approx(expected)
        assert annotation.raw["p_first"] == pytest.approx(0.2) and annotation.raw["p_second"] == pytest.approx(0.6)


def test_label_variants_with_whitespace_add_up_and_case_matters():
    top = {" b": math.log(0.3), "b": math.log(0.2), "B": math.log(0.4), "a": math.log(0.1)}
    assert label_probability(top, "b") == pytest.approx(0.5)
    assert label_probability(top, "a") == pytest.approx(0.1)


def test_one_label_missing_from_the_top_counts_as_zero():
    judge = LLMJudge(FakeGenerator(lambda _: {"a": math.log(0.7), "zzz": math.log(0.3)}))
    for annotation in judge.annotate(*examples(10)):
        assert annotation.preference == (2.0 if annotation.swapped else 1.0)


def test_neither_label_in_the_top_logprobs_fails_and_is_counted_not_tied():
    answers = iter([{"x": -0.1, "y": -3.0}, {"a": -0.5, "b": -1.0}, {"q": -0.2}])
    judge = LLMJudge(FakeGenerator(lambda _: next(answers)))
    annotations = judge.annotate(*examples(3))
    assert [a.failed for a in annotations] == [True, False, True]
    assert annotations[0].preference is None and annotations[0].raw["top_logprobs"] == {"x": -0.1, "y": -3.0}
    m = winrate_metrics([a.preference for a in annotations])
    assert (m["n_failed"], m["n_total"], m["n_draws"]) == (2, 1, 0)


def test_a_generator_without_logprobs_is_a_usage_error():
    class NoLogprobs:
        def generate(self, prompts, params):
            return [[Completion(i, "a")] for i in range(len(prompts))]

    with pytest.raises(UsageError, match="log-probs"):
        LLMJudge(NoLogprobs()).annotate(*examples(1))


def test_custom_labels_are_shown_and_read():
    generator = FakeGenerator(lambda _: {"m": math.log(0.25), "M": math.log(0.75)})
    judge = LLMJudge(generator, labels=("m", "M"))
    annotations = judge.annotate(*examples(8))
    assert "Output (m)" in generator.calls[0][0][0][-1]["content"]
    assert [a.preference for a in annotations] == [pytest.approx(1.25 if a.swapped else 1.75) for a in annotations]


class CountingRuleJudge(RuleJudge):
    """Prefers the output equal to the answer; records the examples and answers of every `annotate` call."""

    def __init__(self):
        super().__init__(lambda text, answer: float(text == answer), name="rule:exact")
        self.calls = []

    def annotate(self, instructions, references, outputs, answers=None):
        self.calls.append((list(instructions), answers))
        return super().annotate(instructions, references, outputs, answers)


def test_annotate_cached_resumes_without_rejudging(tmp_path):
    instructions, references, outputs = [f"i{k}" for k in range(5)], ["x", "y", "z", "x", "y"], ["y"] * 5
    answers, cache, config = ["y", "y", "z", "x", "q"], tmp_path / "annotations.cache.jsonl", {"judge": "exact"}
    judge = CountingRuleJudge()
    first = annotate_cached(judge, instructions, references, outputs, cache, config, answers, batch_size=2)
    assert [r["preference"] for r in first] == [MODEL_WINS, TIE, REFERENCE_WINS, REFERENCE_WINS, TIE]
    assert [len(call[0]) for call in judge.calls] == [2, 2, 1]
    assert [r["key"] for r in first] == [annotation_key(config, *x) for x in zip(instructions, references, outputs)]

    cache.write_text("".join(cache.read_text().splitlines(keepends=True)[:2]) + '{"key": "to')  # killed mid-write
    again = CountingRuleJudge()
    assert annotate_cached(again, instructions, references, outputs, cache, config, answers, batch_size=2) == first
    assert [call[0] for call in again.calls] == [["i2", "i3"], ["i4"]]  # only what was lost
    assert len(cache.read_text().splitlines()) == 5
    other = CountingRuleJudge()  # another judge config: nothing is reused
    annotate_cached(other, instructions, references, outputs, cache, {"judge": "other"}, answers, batch_size=5)
    assert len(other.calls[0][0]) == 5


def test_annotate_cached_passes_answers_only_for_batches_that_all_have_one(tmp_path):
    judge = CountingRuleJudge()
    with pytest.raises(UsageError, match="needs gold answers"):  # the rule judge refuses a batch without answers
        annotate_cached(judge, ["a", "b"], ["x", "y"], ["y", "y"], tmp_path / "c.jsonl", {}, ["y", None])
    assert judge.calls == [(["a", "b"], None)]
    with pytest.raises(UsageError, match="needs gold answers"):
        annotate_cached(judge, ["a", "b"], ["x", "y"], ["y", "y"], tmp_path / "c.jsonl", {}, ["y", None],
                        batch_size=1)
    assert judge.calls[1:] == [(["a"], ["y"]), (["b"], None)]
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 1  # the judged batch was kept
