"""Causal-tracing results (docs/methods.md §5.1): effect tables by token position class, the suggested layer set,
heatmaps and trace.json (its schema is in `posttrain.tracing`).

Position classes, as in ROME: the first, middle (mean over those between first and last) and last subject token,
the first token after the subject, further tokens (mean over those between it and the last token), and the last
token. Tokens before the subject belong to no class. A class a fact lacks (a one- or two-token subject has no
middle; a prompt whose subject is followed by one token has no first subsequent token apart from the last) does not
count for that fact; `counts` says how many facts each row averages.
"""

from __future__ import annotations

from pathlib import Path

POSITIONS = ("first_subject", "middle_subject", "last_subject", "first_subsequent", "further", "last")
SUGGESTION_KIND, SUGGESTION_POSITION = "mlp", "last_subject"
SCHEMA = 1


def position_classes(num_tokens: int, subject: tuple[int, int]) -> list[list[int]]:
    """The token positions of each class in `POSITIONS`, for a prompt of `num_tokens` with subject [start, end)."""
    start, end = subject
    last = num_tokens - 1
    return [[start], list(range(start + 1, end - 1)), [end - 1], [end] if end < last else [],
            list(range(end + 1, last)), [last]]


def effect_table(records: list[dict], kind: str) -> dict:
    """{"effect": [class][layer] mean indirect effect (None for a class no fact has), "counts": [class]}."""
    import numpy as np

    known = [record for record in records if record["correct"]]
    num_layers = len(known[0][kind][0]) if known else 0
    sums, counts = np.zeros((len(POSITIONS), num_layers)), [0] * len(POSITIONS)
    for record in known:
        effect = np.asarray(record[kind]) - record["p_corrupted"]
        for row, positions in enumerate(position_classes(len(effect), tuple(record["subject_range"]))):
            if positions:
                sums[row] += effect[positions].mean(0)
                counts[row] += 1
    rows = [(sums[row] / counts[row]).tolist() if counts[row] else None for row in range(len(POSITIONS))]
    return {"effect": rows, "counts": counts}


def suggested_layers(effects: list[float], min_share: float) -> tuple[list[int], float]:
    """The smallest contiguous layer set whose positive effect is at least `min_share` of the total positive
    effect (ties: the larger share, then the earlier set), and the share it holds; ([], 0.0) when nothing is
    positive."""
    positive = [max(0.0, value) for value in effects]
    total = sum(positive)
    if total <= 0:
        return [], 0.0
    for length in range(1, len(positive) + 1):
        sums = [(sum(positive[start:start + length]), -start) for start in range(len(positive) - length + 1)]
        best, negative_start = max(sums)
        if best >= min_share * total * (1 - 1e-12):
            return list(range(-negative_start, -negative_start + length)), best / total
    raise AssertionError("the whole model holds the whole effect")


def summarise(records: list[dict], config, model_name: str, num_layers: int, sigma: float) -> dict:
    """trace.json's content from the per-fact records."""
    from dataclasses import asdict

    known = [record for record in records if record["correct"]]
    effects = {kind: effect_table(records, kind) for kind in config.kinds}
    row = effects.get(SUGGESTION_KIND, {"effect": [None] * len(POSITIONS)})["effect"][
        POSITIONS.index(SUGGESTION_POSITION)]
    layers, share = suggested_layers(row, config.min_effect_share) if row else ([], 0.0)
    mean = (lambda key: sum(r[key] for r in known) / len(known)) if known else (lambda key: None)
    return {"schema": SCHEMA, "model": model_name, "num_layers": num_layers,
            "settings": {**asdict(config), "kinds": list(config.kinds)},
            "noise_std": sigma, "noise_scale": config.noise_factor * sigma,
            "num_facts": len(records), "num_known": len(known), "p_clean": mean("p_clean"),
            "p_corrupted": mean("p_corrupted"), "positions": list(POSITIONS), "layers": list(range(num_layers)),
            "effects": effects, "suggested_layers": layers,
            "suggestion": {"kind": SUGGESTION_KIND, "position": SUGGESTION_POSITION,
                           "min_share": config.min_effect_share, "share": share}}


_COLOURS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}


def save_heatmap(summary: dict, kind: str, path: Path) -> None:
    """ROME-style heatmap: position classes down, layers across, mean indirect effect as colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from posttrain.evaluation.report import save_figure

    table = summary["effects"][kind]
    values = np.array([row if row is not None else [np.nan] * summary["num_layers"] for row in table["effect"]])
    fig, ax = plt.subplots(figsize=(2.5 + 0.45 * summary["num_layers"], 3.2))
    image = ax.imshow(values, cmap=_COLOURS[kind], aspect="auto")
    ax.set_yticks(range(len(POSITIONS)), [f"{name} ({n})" for name, n in zip(POSITIONS, table["counts"])])
    ax.set_xticks(range(summary["num_layers"]))
    window = summary["settings"]["window"]
    ax.set_xlabel("layer" if kind == "hidden" else f"centre of the restored {window}-layer window")
    ax.set_title(f"{kind}: indirect effect on P(answer), {summary['num_known']} known facts")
    fig.colorbar(image, ax=ax, label="P restored - P corrupted")
    save_figure(fig, path)
    plt.close(fig)


def write_outputs(output: Path, records: list[dict], config, model_name: str, num_layers: int, sigma: float) -> dict:
    """Write trace.json and one heatmap per kind (when some fact is known); return the summary."""
    from posttrain.io import atomic_write_json

    summary = summarise(records, config, model_name, num_layers, sigma)
    if summary["num_known"]:
        for kind in config.kinds:
            save_heatmap(summary, kind, output / f"trace_{kind}.png")
    atomic_write_json(output / "trace.json", summary)
    return summary


def summary_lines(summary: dict) -> list[str]:
    """A short console report: facts known, probabilities, the effect at the last subject token, the layers."""
    lines = [f"facts known (greedy first answer token): {summary['num_known']}/{summary['num_facts']}"]
    if not summary["num_known"]:
        return lines + ["no fact is known, so nothing was traced; suggested_layers is empty"]
    lines.append(f"P(answer) clean {summary['p_clean']:.3f}, corrupted {summary['p_corrupted']:.3f} "
                 f"(noise std {summary['noise_scale']:.4g})")
    row = POSITIONS.index(SUGGESTION_POSITION)
    for kind, table in summary["effects"].items():
        values = " ".join(f"{value:+.3f}" for value in table["effect"][row])
        lines.append(f"{kind:6s} effect at the last subject token by layer: {values}")
    suggestion = summary["suggestion"]
    lines.append(f"suggested_layers {summary['suggested_layers']} ({suggestion['share']:.0%} of the "
                 f"{suggestion['kind']} effect at the last subject token)")
    window, depth = summary["settings"]["window"], summary["num_layers"]
    if set(summary["effects"]) - {"hidden"} and 2 * window > depth:
        lines.append(f"note: the {window}-layer window restores most of this {depth}-layer model, so mlp and attn "
                     f"effects are nearly flat across layers; try --window {max(1, depth // 4)}")
    return lines
