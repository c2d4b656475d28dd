"""Pairwise judges with AlpacaEval's preference convention: 1 = reference wins, 2 = model wins, 1.5 = tie.

The rule judge wraps a programmatic verifier (the proving-ground judges). Reward-model and LLM judges
implement the same `judge` signature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

REFERENCE_WINS, MODEL_WINS, TIE = 1.0, 2.0, 1.5


class PairwiseJudge(Protocol):
    def judge(self, instructions: Sequence[str], references: Sequence[str], outputs: Sequence[str],
              answers: Sequence[str] | None = None) -> list[float]:
        """One preference in [1, 2] per example."""


class RuleJudge:
    """Scores each output with `score(completion, answer) -> float` and prefers the higher score."""

    def __init__(self, score: Callable[[str, str], float]):
        self.score = score

    def judge(self, instructions, references, outputs, answers=None) -> list[float]:
        if answers is None:
            raise ValueError("RuleJudge needs the gold answers")
        preferences = []
        for reference, output, answer in zip(references, outputs, answers, strict=True):
            model, base = self.score(output, answer), self.score(reference, answer)
            preferences.append(MODEL_WINS if model > base else REFERENCE_WINS if base > model else TIE)
        return preferences
