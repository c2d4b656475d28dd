"""Leaderboard metrics from per-example preferences, in AlpacaEval 2 conventions (docs/methods.md §6.1).

A preference is in [1, 2]: 1 = the reference wins, 2 = the model wins, 1.5 = a tie; 0 is also read as a tie.
A missing preference (None or NaN: the judge failed on that example) is left out of every metric and counted
by `n_failed` instead, so a failure is never silently scored as a tie.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from posttrain.preference_scale import TIE, sigmoid


def n_failed(preferences: Sequence[float | None]) -> int:
    return sum(_missing(p) for p in preferences)


def scored_preferences(preferences: Sequence[float | None]) -> list[float]:
    """The preferences the metrics use: missing ones dropped, 0 read as a tie, anything outside [1, 2] refused."""
    scored = []
    for p in preferences:
        if _missing(p):
            continue
        p = TIE if p == 0 else float(p)
        if not 1.0 <= p <= 2.0:
            raise ValueError(f"preference {p} is outside [1, 2] (1 = reference wins, 2 = model wins, 1.5 = tie)")
        scored.append(p)
    return scored


def n_total(preferences: Sequence[float | None]) -> int:
    return len(scored_preferences(preferences))


def n_wins(preferences: Sequence[float | None]) -> int:
    return sum(p > TIE for p in scored_preferences(preferences))


def n_wins_base(preferences: Sequence[float | None]) -> int:
    return sum(p < TIE for p in scored_preferences(preferences))


def n_draws(preferences: Sequence[float | None]) -> int:
    return sum(p == TIE for p in scored_preferences(preferences))


def win_rate(preferences: Sequence[float | None]) -> float:
    """mean(preference - 1) * 100: soft preferences count fractionally."""
    scored = _nonempty(preferences)
    return math.fsum(p - 1.0 for p in scored) / len(scored) * 100


def standard_error(preferences: Sequence[float | None]) -> float:
    """Standard error of the mean preference * 100: sample standard deviation (ddof=1) / sqrt(n). NaN for n < 2."""
    import numpy as np

    scored = np.asarray(_nonempty(preferences))
    if len(scored) < 2:
        return float("nan")
    # numpy's summation order reproduces the leaderboard's printed digits exactly (math.fsum differs in the last)
    return float(np.std(scored, ddof=1) / np.sqrt(len(scored)) * 100)


def discrete_win_rate(preferences: Sequence[float | None]) -> float:
    """Each example counted as a win (> 1.5), a loss (< 1.5) or half a win (a tie), * 100."""
    total = len(_nonempty(preferences))
    return (n_wins(preferences) + n_draws(preferences) / 2) / total * 100


def avg_length(outputs: Sequence[str]) -> int:
    """Mean character length of the model's outputs, truncated to an integer as the leaderboard prints it."""
    return mean_length([len(o) for o in outputs])


def mean_length(lengths: Sequence[int]) -> int:
    if not lengths:
        raise ValueError("no outputs to measure")
    return int(sum(lengths) / len(lengths))


def length_controlled_winrate(preferences: Sequence[float | None], model_lengths: Sequence[int],
                              reference_lengths: Sequence[int], regularization: float = 1.0) -> float:
    """Win rate at zero length difference, from a logistic regression of the preference on a length feature.

    The feature is tanh(d / std(d)), d = model length - reference length (divided by its standard deviation, not
    centred, so that 0 still means "equal length"). The model is P(model wins) = sigmoid(w * feature + b), and the
    length-controlled win rate is sigmoid(b) * 100. Soft preferences enter as two weighted rows per example (a win
    with weight p - 1, a loss with weight 2 - p), so hard preferences give exactly the binary fit and a tie counts
    half each way. L2 strength `regularization` applies to w only (scikit-learn's lbfgs leaves b unpenalised).

    Differs from AlpacaEval 2's published LC, whose GLM also has per-instruction difficulty terms fitted on every
    leaderboard model's annotations; those are not available offline, so numbers differ: on the published
    annotations (tests/fixtures/alpaca_eval) this gives claude-2 35.9, alpaca-7b 14.1, alpaca-7b_verbose 8.7,
    alpaca-7b_concise 9.3 where the leaderboard has 28.2, 5.9, 6.8 and 4.5 (raw win rates 17.2, 2.6, 2.9, 2.0).
    """
    from sklearn.linear_model import LogisticRegression

    kept = [(p, m, r) for p, m, r in zip(preferences, model_lengths, reference_lengths, strict=True) if not _missing(p)]
    scored = scored_preferences([p for p, _, _ in kept])
    if not scored:
        raise ValueError("no preferences to score")
    wins = [p - 1.0 for p in scored]
    if all(w == 1.0 for w in wins) or all(w == 0.0 for w in wins):  # one class only: the fit has no finite optimum
        return wins[0] * 100
    deltas = [float(m - r) for _, m, r in kept]
    spread = _std(deltas)
    features = [[math.tanh(d / spread) if spread > 0 else 0.0] for d in deltas]
    model = LogisticRegression(C=1.0 / regularization if regularization > 0 else math.inf)
    model.fit(features + features, [1] * len(wins) + [0] * len(wins),
              sample_weight=wins + [1.0 - w for w in wins])
    return sigmoid(float(model.intercept_[0])) * 100


def winrate_metrics(preferences: Sequence[float | None], model_outputs: Sequence[str] | None = None,
                    reference_outputs: Sequence[str] | None = None, *, model_lengths: Sequence[int] | None = None,
                    reference_lengths: Sequence[int] | None = None) -> dict[str, float]:
    """The leaderboard row. With both output lists (aligned with `preferences`), or just their character lengths,
    also avg_length and LC win rate."""
    metrics = {
        "win_rate": win_rate(preferences),
        "standard_error": standard_error(preferences),
        "n_wins": n_wins(preferences),
        "n_wins_base": n_wins_base(preferences),
        "n_draws": n_draws(preferences),
        "n_total": n_total(preferences),
        "discrete_win_rate": discrete_win_rate(preferences),
        "n_failed": n_failed(preferences),
    }
    if model_outputs is not None and reference_outputs is not None:
        model_lengths, reference_lengths = [len(o) for o in model_outputs], [len(o) for o in reference_outputs]
    if model_lengths is not None and reference_lengths is not None:
        metrics["avg_length"] = mean_length(model_lengths)
        metrics["length_controlled_winrate"] = length_controlled_winrate(preferences, model_lengths,
                                                                         reference_lengths)
    return metrics


def _missing(p) -> bool:
    return p is None or (isinstance(p, float) and math.isnan(p))


def _nonempty(preferences) -> list[float]:
    scored = scored_preferences(preferences)
    if not scored:
        raise ValueError("no preferences to score (every annotation is missing or failed)")
    return scored


def _std(values: list[float]) -> float:
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0

