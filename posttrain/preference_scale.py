"""The pairwise preference scale shared by judges and win-rate metrics (AlpacaEval's): 1 = the reference wins,
2 = the model wins, 1.5 = a tie."""

from __future__ import annotations

import math

REFERENCE_WINS, MODEL_WINS, TIE = 1.0, 2.0, 1.5


def sigmoid(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(x / 2))  # never overflows, unlike 1 / (1 + exp(-x))
