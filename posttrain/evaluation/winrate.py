"""Leaderboard metrics from per-example preferences, in AlpacaEval 2 conventions (METHODS.md, "Win rate").

A preference is 1 (reference wins), 2 (model wins) or 1.5 (tie); 0 is also read as a tie.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def winrate_metrics(preferences: Sequence[float]) -> dict[str, float]:
    """win_rate = mean(p - 1) * 100, its standard error (sample std, ddof=1), and the discrete counts."""
    prefs = [1.5 if p == 0 else float(p) for p in preferences]
    n = len(prefs)
    if n == 0:
        raise ValueError("no preferences to score")
    shifted = [p - 1.0 for p in prefs]
    mean = sum(shifted) / n
    sem = math.sqrt(sum((x - mean) ** 2 for x in shifted) / (n - 1) / n) if n > 1 else float("nan")
    n_wins = sum(p > 1.5 for p in prefs)
    n_wins_base = sum(p < 1.5 for p in prefs)
    n_draws = n - n_wins - n_wins_base
    return {
        "win_rate": mean * 100,
        "standard_error": sem * 100,
        "n_wins": n_wins,
        "n_wins_base": n_wins_base,
        "n_draws": n_draws,
        "n_total": n,
        "discrete_win_rate": (n_wins + n_draws / 2) / n * 100,
    }
