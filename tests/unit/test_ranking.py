"""Ranking K samples per prompt (posttrain.ranking, docs/methods.md §3) with rule judges and fake judges: win counts,
ties, failures, the tournament's brackets, batching across prompts, resuming from the annotation cache; and the
judge specs INPO uses (the length-biased rule judge)."""

from __future__ import annotations

import pytest

from posttrain.errors import UsageError
from posttrain.judges import Annotation, LengthBiasedRuleJudge, RuleJudge, judge_from_spec
from posttrain.preference_scale import MODEL_WINS, REFERENCE_WINS, TIE
from posttrain.ranking import rank_samples

SORT8 = "01234567"


class NumberJudge:
    """Prefers the larger number; fails (None) on any text in `fail_on`; records each annotate call's size."""

    name = "number"

    def __init__(self, fail_on=(), stop_after_calls=None):
        self.fail_on, self.stop_after_calls, self.calls = set(fail_on), stop_after_calls, []

    def annotate(self, instructions, references, outputs, answers=None):
        if self.stop_after_calls is not None and len(self.calls) >= self.stop_after_calls:
            raise KeyboardInterrupt("killed")
        self.calls.append(len(outputs))
        out = []
        for reference, output in zip(references, outputs, strict=True):
            if reference in self.fail_on or output in self.fail_on:
                out.append(Annotation(None))
            else:
                r, o = int(reference), int(output)
                out.append(Annotation(MODEL_WINS if o > r else REFERENCE_WINS if r > o else TIE))
        return out


def test_all_pairs_counts_wins_and_half_wins_for_ties():
    judge = RuleJudge(lambda completion, answer: float(completion == answer))
    ranked = rank_samples(judge, ["sort 70615243"], [["x", SORT8, "0123"]], answers=[SORT8]).prompts[0]
    assert ranked.wins == [0.5, 2.0, 0.5]  # the two wrong answers tie with each other
    assert (ranked.chosen, ranked.rejected) == (1, 2)  # fewest wins, tied: the highest index is the worst
    assert (ranked.comparisons, ranked.ties, ranked.failed, ranked.no_pair) == (3, 1, 0, None)


def test_all_tied_prompt_yields_no_pair_and_is_counted():
    judge = RuleJudge(lambda completion, answer: float(completion == answer))
    ranking = rank_samples(judge, ["p", "q"], [[SORT8, SORT8, SORT8], ["1", SORT8]], answers=[SORT8, SORT8])
    assert ranking.prompts[0].no_pair == "indistinguishable" and ranking.prompts[0].chosen is None
    assert ranking.judge_calls == 1  # identical texts are ties without a judge call
    assert ranking.counts() == {"prompts": 2, "pairs": 1, "comparisons": 4, "judge_calls": 1, "ties": 3,
                                "failed": 0, "no_pair": {"indistinguishable": 1}}


def test_failed_annotations_give_no_win_and_are_counted():
    ranked = rank_samples(NumberJudge(fail_on={"5"}), ["p"], [["1", "5", "3"]]).prompts[0]
    assert ranked.wins == [0.0, 0.0, 1.0] and ranked.failed == 2
    assert (ranked.chosen, ranked.rejected) == (2, 1)


def test_all_pairs_batches_every_prompt_into_one_call():
    judge = NumberJudge()
    ranking = rank_samples(judge, ["p", "q", "r"], [["1", "2", "3", "4"]] * 3, batch_size=100)
    assert judge.calls == [18] and ranking.counts()["pairs"] == 3
    assert all((p.chosen, p.rejected) == (3, 0) for p in ranking.prompts)


def test_tournament_finds_the_best_and_a_first_round_loser_in_four_batched_rounds():
    judge = NumberJudge()
    samples = [[str(v) for v in values] for values in ([5, 2, 7, 1, 8, 3, 6, 4], [3, 1, 2, 4, 8, 7, 6, 5])]
    ranking = rank_samples(judge, ["p", "q"], samples, scheme="tournament", seed=3, batch_size=100)
    # rounds: 4 matches, 2 + 2 (winners and losers brackets), 1 + 1, the final; per prompt, so doubled
    assert judge.calls[:3] == [8, 8, 4] and len(judge.calls) <= 4
    for texts, ranked in zip(samples, ranking.prompts):
        assert texts[ranked.chosen] == "8" and texts[ranked.rejected] == "1"  # a strict order: the global extremes
        assert ranked.comparisons in (10, 11)  # the final is not judged again if the two already met


def test_tournament_is_reproducible_from_its_seed_and_drops_a_tied_final():
    samples = [["1", "1", "1", "1"]]
    ranked = rank_samples(NumberJudge(), ["p"], samples, scheme="tournament").prompts[0]
    assert ranked.no_pair == "final_tied" and ranked.chosen is None
    args = (["p", "q"], [[str(v) for v in range(7)]] * 2)
    first = rank_samples(NumberJudge(), *args, scheme="tournament", seed=1)
    again = rank_samples(NumberJudge(), *args, scheme="tournament", seed=1)
    assert [p.to_dict() for p in first.prompts] == [p.to_dict() for p in again.prompts]


def test_tournament_with_one_sample_has_no_pair():
    assert rank_samples(NumberJudge(), ["p"], [["1"]], scheme="tournament").prompts[0].no_pair == "too_few_samples"


@pytest.mark.parametrize("scheme", ["all_pairs", "tournament"])
def test_a_killed_ranking_resumes_from_the_cache_without_judging_again(scheme, tmp_path):
    samples = [[str(v) for v in values] for values in ([5, 2, 7, 1, 8, 3], [3, 1, 2, 4, 6, 5])]
    options = {"scheme": scheme, "cache": tmp_path / "cache.jsonl", "judge_config": {"judge": "number"},
               "batch_size": 4}
    straight = rank_samples(NumberJudge(), ["p", "q"], samples, **{**options, "cache": tmp_path / "other.jsonl"})
    with pytest.raises(KeyboardInterrupt):
        rank_samples(NumberJudge(stop_after_calls=2), ["p", "q"], samples, **options)
    judged_before_kill = len((tmp_path / "cache.jsonl").read_text().splitlines())
    assert 0 < judged_before_kill < straight.judge_calls
    resumed_judge = NumberJudge()
    resumed = rank_samples(resumed_judge, ["p", "q"], samples, **options)
    assert sum(resumed_judge.calls) == straight.judge_calls - judged_before_kill
    assert [p.to_dict() for p in resumed.prompts] == [p.to_dict() for p in straight.prompts]


def test_unknown_scheme_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown ranking scheme 'swiss'.*all_pairs, tournament"):
        rank_samples(NumberJudge(), ["p"], [["1", "2"]], scheme="swiss")


def test_length_biased_rule_judge_gives_ties_to_the_longer_output():
    judge = judge_from_spec("rule-longer:sort8")
    assert isinstance(judge, LengthBiasedRuleJudge) and judge.name == "rule-longer:sort8"
    annotations = judge.annotate(["p"] * 4, ["wrong", SORT8, "0 1 2 = 012", "abc"],
                                 ["wrong but longer", "1 2 = " + SORT8, "0 1", "xyz"], [SORT8] * 4)
    assert [a.preference for a in annotations] == [MODEL_WINS, MODEL_WINS, REFERENCE_WINS, TIE]
    assert [a.raw.get("length_tie_break", False) for a in annotations] == [True, True, True, False]
    assert [a.preference for a in judge_from_spec("rule:sort8").annotate(
        ["p"], ["wrong"], ["wrong but longer"], [SORT8])] == [TIE]


@pytest.mark.parametrize(("spec", "labels", "expected"), [
    ("oracle:sort8", ("a", "b"), "unknown judge 'oracle:sort8'; use rule:<task>, rule-longer:<task>"),
    ("llm-openai:http://localhost:1/v1", ("a", "b"), "served model's name"),
    ("llm-openai:http://localhost:1/v1#m", "a,a", "judge_labels 'a,a' must be two different labels"),
])
def test_bad_judge_specs_are_usage_errors(spec, labels, expected):
    with pytest.raises(UsageError, match=expected.replace("(", r"\(")):
        judge_from_spec(spec, labels=labels)
