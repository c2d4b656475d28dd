"""Rank K samples per prompt with any pairwise judge and keep the best and the worst (INPO's step 2,
docs/methods.md §3).

Two schemes (`SCHEMES`):

- `all_pairs`: every unordered pair of a prompt's samples is judged once; a win counts 1, a tie 1/2 to each side, a
  failed annotation nothing. Best = most wins (ties: the lowest sample index), worst = fewest wins (ties: the highest
  index). A prompt whose best and worst have equal wins (e.g. every comparison tied) yields no pair.
- `tournament`: single elimination in an order shuffled per prompt from `seed` (a bye for an odd one out). The
  champion is the best; the worst comes out of a losers' bracket of the first-round losers (the match's loser moves
  on), and the pair is kept only if the champion then beats the worst (as in the authors' script, whose K = 8
  tournament this is). A tied or failed match counts as a win for the sample listed first in the shuffled order
  (so in the losers' bracket the other one moves on).

Each unordered pair is judged at most once, the lower sample index as the reference and the higher as the output
(an LLM judge randomises which it displays first itself). A judge preference above 1.5 is a win for the output,
below for the reference; two identical texts are a tie without a judge call. Every tie and failed annotation is
counted and reported; a prompt without a pair says why (`no_pair`). All prompts' comparisons of a round go to the
judge together, through `posttrain.judges.annotate_cached` when a `cache` is given, so a killed ranking resumes
without judging again.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from posttrain.errors import UsageError
from posttrain.preference_scale import TIE

SCHEMES = ("all_pairs", "tournament")


@dataclass
class RankedPrompt:
    """One prompt's outcome: sample indices of the pair (None without one) and the counts behind it."""

    chosen: int | None = None
    rejected: int | None = None
    wins: list[float] = field(default_factory=list)  # per sample
    comparisons: int = 0  # comparisons made (identical texts and failed annotations included)
    ties: int = 0
    failed: int = 0
    no_pair: str | None = None  # too_few_samples | indistinguishable | final_tied | final_failed | final_lost

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Ranking:
    prompts: list[RankedPrompt]
    judge_calls: int = 0  # comparisons sent to the judge (cached or not)

    def counts(self) -> dict:
        """Totals for the report: prompts, pairs, comparisons, judge calls, ties, failed, and prompts without a
        pair by reason."""
        reasons = Counter(p.no_pair for p in self.prompts if p.no_pair)
        return {"prompts": len(self.prompts), "pairs": sum(p.chosen is not None for p in self.prompts),
                "comparisons": sum(p.comparisons for p in self.prompts), "judge_calls": self.judge_calls,
                "ties": sum(p.ties for p in self.prompts), "failed": sum(p.failed for p in self.prompts),
                "no_pair": dict(sorted(reasons.items()))}


@dataclass(frozen=True)
class Match:
    prompt: int
    first: int  # shown as the reference
    second: int  # shown as the output


def canonical(match: Match) -> Match:
    """The match with the lower sample index first."""
    return match if match.first < match.second else Match(match.prompt, match.second, match.first)


def outcome(preference: float | None) -> float | None:
    """The second sample's share of a win: 1, 0, 1/2 for a tie, None when the judge failed."""
    if preference is None:
        return None
    return 1.0 if preference > TIE else 0.0 if preference < TIE else 0.5


class _Rounds:
    """Judges batches of matches and records every result in the prompts' counts."""

    def __init__(self, judge, instructions, samples, answers, cache, judge_config, batch_size, progress):
        self.judge, self.instructions, self.samples, self.answers = judge, instructions, samples, answers
        self.cache, self.judge_config, self.batch_size, self.progress = cache, judge_config, batch_size, progress
        self.prompts = [RankedPrompt(wins=[0.0] * len(s)) for s in samples]
        self.results: dict[Match, float | None] = {}
        self.judge_calls = 0

    def play(self, matches: list[Match]) -> list[float | None]:
        """Each match's `outcome`, judging each unordered pair once, the lower sample index shown as the reference
        (identical texts: a tie, no call)."""
        new = list(dict.fromkeys(canonical(m) for m in matches if canonical(m) not in self.results))
        sent = [m for m in new if self.samples[m.prompt][m.first] != self.samples[m.prompt][m.second]]
        for match, preference in zip(sent, self._preferences(sent), strict=True):
            self._record(match, outcome(preference))
        for match in new:
            if match not in self.results:
                self._record(match, 0.5)
        return [self._result(m) for m in matches]

    def _result(self, match: Match) -> float | None:
        result = self.results[canonical(match)]
        return result if result is None or match.first < match.second else 1.0 - result

    def _record(self, match: Match, result: float | None) -> None:
        self.results[match] = result
        ranked = self.prompts[match.prompt]
        ranked.comparisons += 1
        if result is None:
            ranked.failed += 1
            return
        ranked.ties += result == 0.5
        ranked.wins[match.first] += 1.0 - result
        ranked.wins[match.second] += result

    def _preferences(self, matches: list[Match]) -> list[float | None]:
        if not matches:
            return []
        self.judge_calls += len(matches)
        instructions = [self.instructions[m.prompt] for m in matches]
        references = [self.samples[m.prompt][m.first] for m in matches]
        outputs = [self.samples[m.prompt][m.second] for m in matches]
        answers = None if self.answers is None else [self.answers[m.prompt] for m in matches]
        if self.cache is not None:
            from posttrain.judges import annotate_cached

            records = annotate_cached(self.judge, instructions, references, outputs, self.cache, self.judge_config,
                                      answers=answers, batch_size=self.batch_size, progress=self.progress)
            return [r["preference"] for r in records]
        found = []
        for start in range(0, len(matches), self.batch_size):
            gold = None if answers is None else answers[start:start + self.batch_size]
            found += self.judge.annotate(instructions[start:start + self.batch_size],
                                         references[start:start + self.batch_size],
                                         outputs[start:start + self.batch_size], None if gold is None or None in gold
                                         else gold)
        return [a.preference for a in found]


def _all_pairs(rounds: _Rounds) -> None:
    rounds.play([Match(p, i, j) for p, texts in enumerate(rounds.samples)
                 for i in range(len(texts)) for j in range(i + 1, len(texts))])
    for ranked in rounds.prompts:
        if len(ranked.wins) < 2:
            ranked.no_pair = "too_few_samples"
            continue
        best = max(range(len(ranked.wins)), key=lambda k: (ranked.wins[k], -k))
        worst = min(range(len(ranked.wins)), key=lambda k: (ranked.wins[k], -k))
        if ranked.wins[best] == ranked.wins[worst]:
            ranked.no_pair = "indistinguishable"
        else:
            ranked.chosen, ranked.rejected = best, worst


def _bracket(entrants: list[int], prompt: int) -> tuple[list[Match], list[int]]:
    """A round's matches over `entrants`, in order, and the bye (an odd one out, or nothing)."""
    matches = [Match(prompt, entrants[k], entrants[k + 1]) for k in range(0, len(entrants) - 1, 2)]
    return matches, entrants[len(matches) * 2:]


def _advance(matches: list[Match], results: list[float | None], keep_winner: bool) -> list[int]:
    """Who moves on from each match: its winner (or its loser, in the losers' bracket); a tie or failure counts
    as a win for the first listed."""
    out = []
    for match, result in zip(matches, results, strict=True):
        first_wins = result is None or result <= 0.5
        winner, loser = (match.first, match.second) if first_wins else (match.second, match.first)
        out.append(winner if keep_winner else loser)
    return out


def _tournament(rounds: _Rounds, seed: int) -> None:
    winners, losers = [], []  # per prompt: who is still in each bracket (losers: None before round 1)
    for p, texts in enumerate(rounds.samples):
        order = list(range(len(texts)))
        random.Random(f"{seed}\n{rounds.instructions[p]}").shuffle(order)
        winners.append(order)
        losers.append(None)
    while True:
        plan = []  # (prompt, bracket, matches, bye)
        for p in range(len(rounds.samples)):
            if len(winners[p]) > 1:
                plan.append((p, "winners", *_bracket(winners[p], p)))
            if losers[p] is not None and len(losers[p]) > 1:
                plan.append((p, "losers", *_bracket(losers[p], p)))
        if not plan:
            break
        results = iter(rounds.play([m for _, _, matches, _ in plan for m in matches]))
        for p, bracket, matches, bye in plan:
            played = [next(results) for _ in matches]
            if bracket == "winners":
                if losers[p] is None:
                    losers[p] = _advance(matches, played, keep_winner=False)
                winners[p] = _advance(matches, played, keep_winner=True) + bye
            else:
                losers[p] = _advance(matches, played, keep_winner=False) + bye
    finals = {p: Match(p, winners[p][0], losers[p][0]) for p in range(len(rounds.samples)) if losers[p]}
    results = dict(zip(finals, rounds.play(list(finals.values())), strict=True))
    for p, ranked in enumerate(rounds.prompts):
        if p not in finals:
            ranked.no_pair = "too_few_samples"
        elif results[p] == 0.0:  # the champion (shown first) beat the worst
            ranked.chosen, ranked.rejected = finals[p].first, finals[p].second
        else:
            ranked.no_pair = {None: "final_failed", 0.5: "final_tied", 1.0: "final_lost"}[results[p]]


def rank_samples(judge, instructions: Sequence[str], samples: Sequence[Sequence[str]], scheme: str = "all_pairs",
                 answers: Sequence[str | None] | None = None, seed: int = 0, cache: str | os.PathLike | None = None,
                 judge_config: dict | None = None, batch_size: int = 32, progress: str | None = None) -> Ranking:
    """Rank each prompt's samples (`samples[p]`, texts) with `judge`, a `posttrain.judges.PairwiseJudge`.

    `answers`: gold answers per prompt for a rule judge. `cache`: a JSON-lines annotation cache (needs
    `judge_config`, the judge's settings that key it). `progress`: a label for the judging bar (cached path only).
    """
    if scheme not in SCHEMES:
        raise UsageError(f"unknown ranking scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    if cache is not None and judge_config is None:
        raise ValueError("a ranking cache needs the judge_config that keys it")
    if len(instructions) != len(samples) or (answers is not None and len(answers) != len(samples)):
        raise ValueError("instructions, samples and answers need one entry per prompt")
    rounds = _Rounds(judge, list(instructions), [list(s) for s in samples], answers, cache, judge_config,
                     batch_size, progress)
    if scheme == "all_pairs":
        _all_pairs(rounds)
    else:
        _tournament(rounds, seed)
    return Ranking(rounds.prompts, rounds.judge_calls)
