"""Rows, means, the paper's claim and the tables of `posttrain demo unlearn` (docs/methods.md §5.4): pure functions
over the results of `posttrain.evaluation.unlearning_run.evaluate_unlearning`.

The claim checked (Agrawal & Huang 2025, as issue 15 states it): forget regurgitation falls by at least 80% while
retain and general ability keep at least 90%. MMLU means nothing for a tiny model trained from scratch on
biographies, so general ability is measured on biographies of people the model never saw (pg:facts/holdout): the
geometric-mean per-token probability of those documents after unlearning relative to before, exp(NLL_before -
NLL_after). It asks whether the model still knows the language of the facts (the templates, what a place name, a
job or a year looks like) once the forget people are gone; the MIA pass already scores these documents.
"""

from __future__ import annotations

import math

METRICS = ("forget_regurgitation", "forget_knowledge", "retain_regurgitation", "retain_knowledge", "aggregate",
           "mia_auc", "mia_score", "holdout_nll")
CLAIM_KEYS = ("forget_drop", "retain_regurgitation_kept", "retain_knowledge_kept", "general_kept")
FORGET_DROP_TARGET, KEPT_TARGET = 0.8, 0.9


def compact_row(results: dict) -> dict:
    """The numbers the demo reports from one `evaluate_unlearning` result (raw scores: forget not inverted)."""
    overall, mia = results["overall"], results["mia"] or {}
    return {"forget_regurgitation": overall["forget"]["regurgitation"],
            "forget_knowledge": overall["forget"]["knowledge"],
            "retain_regurgitation": overall["retain"]["regurgitation"],
            "retain_knowledge": overall["retain"]["knowledge"],
            "aggregate": results["aggregate"]["value"], "mia_auc": mia.get("auc"), "mia_score": mia.get("score"),
            "holdout_nll": mia.get("mean_nonmember_nll"), "forget_document_nll": mia.get("mean_member_nll")}


def _ratio(after: float | None, before: float | None) -> float | None:
    return None if after is None or not before else after / before


def claim(row: dict, before: dict) -> dict:
    """The claim's four numbers for `row` against the starting model, and whether all hold."""
    drop = _ratio(row["forget_regurgitation"], before["forget_regurgitation"])
    general = (None if row["holdout_nll"] is None or before["holdout_nll"] is None
               else math.exp(before["holdout_nll"] - row["holdout_nll"]))
    numbers = {"forget_drop": None if drop is None else 1 - drop,
               "retain_regurgitation_kept": _ratio(row["retain_regurgitation"], before["retain_regurgitation"]),
               "retain_knowledge_kept": _ratio(row["retain_knowledge"], before["retain_knowledge"]),
               "general_kept": general}
    holds = (None if any(v is None for v in numbers.values()) else numbers["forget_drop"] >= FORGET_DROP_TARGET
             and all(numbers[k] >= KEPT_TARGET for k in CLAIM_KEYS[1:]))
    return {**numbers, "holds": holds}


def _mean(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def mean_rows(rows: list[dict], before: dict) -> list[dict]:
    """Per arm (first-seen order), the mean of every metric over its seeds, with the claim recomputed on the means;
    `holds_per_seed` counts the seeds where the claim held."""
    means = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        mean = {"arm": arm, "seed": "mean", "layers": mine[0]["layers"] if len({str(r["layers"]) for r in mine}) == 1
                else "per seed", **{k: _mean([r[k] for r in mine]) for k in METRICS}}
        means.append({**mean, **claim(mean, before), "holds_per_seed": sum(bool(r["holds"]) for r in mine),
                      "seeds": len(mine)})
    return means


def _cell(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _layers(layers) -> str:
    return layers if isinstance(layers, str) else ",".join(map(str, layers))


def metric_table(before: dict, rows: list[dict], means: list[dict]) -> list[str]:
    """Every metric: the starting model, then per arm each seed and the mean."""
    lines = ["| arm | layers | seed | forget regurg. | forget knowl. | retain regurg. | retain knowl. | task agg. "
             "| MIA AUC | MIA score | holdout NLL |", "|---|---|---|" + "---|" * 8]

    def line(arm, layers, seed, r):
        return (f"| {arm} | {layers} | {seed} | " + " | ".join(_cell(r[k]) for k in METRICS) + " |")

    lines.append(line("before (facts model)", "-", "-", before))
    for mean in means:
        for r in [r for r in rows if r["arm"] == mean["arm"]] + [mean]:
            lines.append(line(mean["arm"], _layers(r["layers"]), r["seed"], r))
    return lines


def claim_table(means: list[dict]) -> list[str]:
    """Per arm (means over seeds): the claim's numbers against its targets."""
    lines = [f"| arm | forget regurgitation drop (>= {FORGET_DROP_TARGET:.0%}) | retain regurgitation kept "
             f"(>= {KEPT_TARGET:.0%}) | retain knowledge kept | general ability kept | holds (mean) | holds (seeds) |",
             "|---|---|---|---|---|---|---|"]
    for m in means:
        holds = "-" if m["holds"] is None else "yes" if m["holds"] else "no"
        lines.append(f"| {m['arm']} | " + " | ".join(_cell(m[k], ".1%") for k in CLAIM_KEYS)
                     + f" | {holds} | {m['holds_per_seed']}/{m['seeds']} |")
    return lines


def headline_lines(unlearning: dict) -> list[str]:
    """The headline demo's second table: the traced-layer method (mean over seeds) and the starting model."""
    means = {m["arm"]: m for m in unlearning["means"]}
    traced, before = means["traced"], unlearning["before"]
    return ["## unlearning (facts task)", "",
            "Layer-frozen unlearning (`unlearn`, traced layers "
            f"{_layers(traced['layers'])}) of 20 of 200 memorised people, mean over {traced['seeds']} seed(s); "
            "baselines (random layers, gradient difference, NPO): `posttrain demo unlearn`.", "",
            "| model | forget regurg. | retain regurg. | retain knowl. | holdout NLL | forget drop | retain kept "
            "| general kept |", "|---|---|---|---|---|---|---|---|",
            f"| before | {_cell(before['forget_regurgitation'])} | {_cell(before['retain_regurgitation'])} | "
            f"{_cell(before['retain_knowledge'])} | {_cell(before['holdout_nll'])} | | | |",
            f"| unlearn (traced) | {_cell(traced['forget_regurgitation'])} | "
            f"{_cell(traced['retain_regurgitation'])} | {_cell(traced['retain_knowledge'])} | "
            f"{_cell(traced['holdout_nll'])} | {_cell(traced['forget_drop'], '.1%')} | "
            f"{_cell(traced['retain_regurgitation_kept'], '.1%')} | {_cell(traced['general_kept'], '.1%')} |", ""]
