"""Proving-ground evidence for INPO (docs/methods.md §3): INPO against iterative DPO over the loop's iterations.

Per seed, from the seed's SFT checkpoint (`posttrain.demo.SeedStages`' `sft` stage), `posttrain iterate` runs each
arm for `iterations` iterations: `inpo` (the INPO toy recipe), `dpo` (iterative DPO: the same loop, prompts, judge
and optimiser settings, with DPO's loss; its reference in iteration t is pi_t) and `inpo-tau0` (INPO with
tau_ratio 0, the "no KL" ablation). Each arm runs once per judge: `rule:<task>` (exact match) and
`rule-longer:<task>` (the same with a documented length bias on ties), except the ablation, which only answers the
length question and so runs only under the length-biased judge. Per iteration the loop records the win rate of
pi_t's greedy outputs against pi_0's (judged by the loop's own judge), held-out greedy accuracy and mean greedy
length. `report.md` holds the tables (mean over seeds and per seed) and the paper's two claims against them,
`curves.png` the three curves, `results.json` everything. Every loop is a resumable stage (and resumes inside itself).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from posttrain.console import quiet_libraries, silent
from posttrain.data.tasks import get_task
from posttrain.demo import DemoSettings, SeedStages, demo_tiny_model, open_demo, run_stage, toy_recipe, train_stage
from posttrain.io import atomic_write_json, atomic_write_text

JUDGES = ("rule", "rule-longer")
# arm -> (the registered method whose toy recipe trains it, overrides of that recipe)
ARMS: dict[str, tuple[str, dict]] = {"inpo": ("inpo", {}), "dpo": ("dpo", {}), "inpo-tau0": ("inpo", {"tau_ratio": 0})}
RUNS = tuple((judge, arm) for judge in JUDGES for arm in ARMS if arm != "inpo-tau0" or judge == "rule-longer")
METRICS = {"win_rate": ("win rate vs pi_0 (%, the loop's judge)", ".1f"),
           "accuracy": ("held-out greedy accuracy", ".3f"),
           "mean_length_tokens": ("mean greedy length (tokens)", ".2f")}
SAMPLING = {"sample_temperature": 1.0, "sample_top_k": 10, "ranking": "all_pairs", "generation_backend": "transformers"}


@dataclass(frozen=True)
class InpoSettings(DemoSettings):
    prompts_per_iteration: int = 384
    samples_per_prompt: int = 4
    iterations: int = 3


ITERATIONS = InpoSettings.iterations


def loop_overrides(stages: SeedStages, judge: str, prompts: int, samples: int, iterations: int) -> dict:
    """The keys that turn a method's toy recipe into the loop of one arm: pi_0 = the seed's SFT model, fresh
    prompts each iteration (seeded apart from the SFT data), K samples at temperature 1 with top-k 10 (the demo's
    on-policy pairs' sampling: full-vocabulary samples of a half-trained tiny model are mostly noise), the task's
    answer length plus 4 new tokens (as its eval), and the win rate on the seed's held-out eval prompts."""
    task = stages.settings.task
    return {"model_name_or_path": str(stages.pipe.path("sft")), **stages.common, **SAMPLING,
            "iterations": iterations, "samples_per_prompt": samples, "prompts_per_iteration": prompts,
            "sample_batch_size": min(prompts, 512), "sample_max_new_tokens": get_task(task).num_digits + 4,
            "prompt_dataset": f"pg:{task}/sft", "prompt_seed": stages.seed + 1, "judge": f"{judge}:{task}",
            "eval_num_prompts": stages.settings.eval_examples}


def run_arm_loop(stage_dir: Path, stages: SeedStages, arm: str, judge: str, prompts: int, samples: int,
                 iterations: int) -> dict:
    """`posttrain iterate` of one arm into `stage_dir`; returns the loop's report."""
    from posttrain.iterate import run_loop
    from posttrain.recipe import load_recipe

    method, extra = ARMS[arm]
    recipe = load_recipe(toy_recipe(method), output_dir=str(stage_dir),
                         **loop_overrides(stages, judge, prompts, samples, iterations), **extra)
    return run_loop(recipe)


def arm_row(stages: SeedStages, judge: str, arm: str, report: dict) -> dict:
    """One loop's row: its points pi_0..pi_T, pairs per iteration and seconds."""
    return {"seed": stages.seed, "judge": judge, "arm": arm, "points": report["points"],
            "pairs": [(d["results"].get("pairs") or {}).get("pairs") for d in report["details"]],
            "seconds": report["timing"]["total_seconds"]}


@silent()
@quiet_libraries()
def run_inpo_comparison(output: str = "runs/demo-inpo", seeds: tuple[int, ...] = (0, 1), task_name: str = "sort8",
                        eval_examples: int = 300, prompts_per_iteration: int = 384, samples_per_prompt: int = 4,
                        iterations: int = 3, runs: tuple[tuple[str, str], ...] = RUNS) -> list[dict]:
    """Every (judge, arm) loop of `runs` for every seed; writes `<output>/report.md`, `curves.png` and
    `results.json` after each seed; returns the rows."""
    settings = InpoSettings(task_name, 0, eval_examples, prompts_per_iteration, samples_per_prompt, iterations)
    pipe = open_demo(output, settings)
    tiny, rows = demo_tiny_model(pipe), []
    for seed in seeds:
        stages = SeedStages(pipe, seed, settings)
        train_stage(stages.pipe, "sft", toy_recipe("sft"), model_name_or_path=str(tiny), **stages.common)
        for judge, arm in runs:
            report = run_stage(stages.pipe, f"{judge}/{arm}", partial(
                run_arm_loop, stages=stages, arm=arm, judge=judge, prompts=prompts_per_iteration,
                samples=samples_per_prompt, iterations=iterations))
            rows.append(arm_row(stages, judge, arm, report))
        write_report(Path(output), rows, settings)
    return rows


# --- aggregation, claims, report ---------------------------------------------------------------------------------


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def mean_rows(rows: list[dict]) -> list[dict]:
    """One row per (judge, arm) whose points average each metric over the seeds, iteration by iteration."""
    means = []
    for judge, arm in dict.fromkeys((r["judge"], r["arm"]) for r in rows):
        mine = [r for r in rows if (r["judge"], r["arm"]) == (judge, arm)]
        points = [{"iteration": t, **{key: _mean(r["points"][t][key] for r in mine if t < len(r["points"]))
                                      for key in METRICS}}
                  for t in range(max(len(r["points"]) for r in mine))]
        means.append({"seed": "mean", "judge": judge, "arm": arm, "points": points})
    return means


def _final(rows: list[dict], judge: str, arm: str, key: str) -> dict:
    """seed -> the metric of the last iterate."""
    return {r["seed"]: r["points"][-1][key] for r in rows if (r["judge"], r["arm"]) == (judge, arm)}


def _growth(rows: list[dict], judge: str, arm: str) -> dict:
    """seed -> mean greedy length of the last iterate minus pi_0's."""
    return {r["seed"]: r["points"][-1]["mean_length_tokens"] - r["points"][0]["mean_length_tokens"]
            for r in rows if (r["judge"], r["arm"]) == (judge, arm)}


def _fmt(values: dict, spec: str) -> str:
    return " / ".join(format(values[s], spec) for s in sorted(values)) or "not run"


def _above(a: dict, b: dict) -> bool | None:
    """a > b on every seed both have; None when they share no seed."""
    seeds = sorted(set(a) & set(b))
    return all(a[s] > b[s] for s in seeds) if seeds else None


def claims(rows: list[dict]) -> list[dict]:
    """The paper's claims against these rows (values per seed, a / b), each holding only on every seed."""
    found = []
    for judge in dict.fromkeys(r["judge"] for r in rows):
        for key, what in (("win_rate", "win rate vs pi_0"), ("accuracy", "accuracy")):
            inpo, dpo = _final(rows, judge, "inpo", key), _final(rows, judge, "dpo", key)
            spec = METRICS[key][1]
            found.append({"claim": f"INPO beats iterative DPO ({what}, last iterate, judge {judge})",
                          "paper": "LC AlpacaEval 2: 41.5% vs iterative DPO's lower (Llama-3-8B-SFT)",
                          "measured": f"INPO {_fmt(inpo, spec)}; iterative DPO {_fmt(dpo, spec)}",
                          "holds": _above(inpo, dpo)})
    if "rule-longer" in {r["judge"] for r in rows}:
        inpo, tau0, dpo = (_growth(rows, "rule-longer", arm) for arm in ("inpo", "inpo-tau0", "dpo"))
        found.append({"claim": "tau > 0 keeps responses shorter (length growth pi_0 -> last, length-biased judge)",
                      "paper": "the KL term limits length growth",
                      "measured": f"INPO {_fmt(inpo, '+.2f')}; INPO tau 0 {_fmt(tau0, '+.2f')}; iterative DPO "
                                  f"{_fmt(dpo, '+.2f')} tokens",
                      "holds": _above(tau0, inpo)})
    return found


def metric_table(rows: list[dict], key: str) -> list[str]:
    """Markdown: per (judge, arm), the mean over seeds and each seed, one column per model pi_0..pi_T."""
    title, spec = METRICS[key]
    width = max(len(r["points"]) for r in rows)
    lines = [f"**{title}**", "", "| judge | method | seed | " + " | ".join(f"pi_{t}" for t in range(width)) + " |",
             "|---|---|---|" + "---|" * width]
    for mean in mean_rows(rows):
        group = [mean] + [r for r in rows if (r["judge"], r["arm"]) == (mean["judge"], mean["arm"])]
        for r in group:
            cells = [format(p[key], spec) if p.get(key) is not None else "" for p in r["points"]]
            lines.append(f"| {r['judge']} | {r['arm']} | {r['seed']} | " + " | ".join(cells) + " |")
    return lines + [""]


def plot_curves(rows: list[dict], path: Path) -> None:
    """One PNG, three panels (win rate, accuracy, length) against the iteration: the mean over seeds of each
    (judge, arm), colour by arm and line style by judge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posttrain.evaluation.report import save_figure

    fig, axes = plt.subplots(1, len(METRICS), figsize=(14, 3.8), layout="constrained")
    colours = {arm: f"C{i}" for i, arm in enumerate(ARMS)}
    styles = {judge: style for judge, style in zip(JUDGES, ("-", "--"))}
    for mean in mean_rows(rows):
        for ax, key in zip(axes, METRICS):
            known = [(p["iteration"], p[key]) for p in mean["points"] if p[key] is not None]
            if known:
                ax.plot(*zip(*known), styles.get(mean["judge"], ":"), marker="o", color=colours.get(mean["arm"]),
                        label=f"{mean['arm']} ({mean['judge']})")
    for ax, (title, _) in zip(axes, METRICS.values()):
        ax.set_title(title)
        ax.set_xlabel("iteration (model pi_t)")
        ax.set_xticks(range(max(len(r["points"]) for r in rows)))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def write_report(output: Path, rows: list[dict], settings: InpoSettings) -> None:
    """`report.md` (three tables, claims, pairs and seconds per loop), `curves.png` and `results.json`."""
    found = claims(rows)
    lines = [f"# INPO on the proving ground: INPO vs iterative DPO, {settings.iterations} iterations", "",
             "Every loop from the seed's SFT model (pi_0); per iteration "
             f"{settings.prompts_per_iteration} new prompts, "
             f"K = {settings.samples_per_prompt} samples (temperature 1, top-k 10), best vs worst by all-pairs "
             f"judging. Win rate: pi_t's greedy outputs against pi_0's on {settings.eval_examples} held-out prompts, "
             "judged by the loop's own judge (`rule`: exact match; `rule-longer`: exact match, then the longer "
             "output wins a tie). Accuracy: greedy exact match on the same prompts. Curves (mean over seeds): "
             "`curves.png`.", ""]
    for key in METRICS:
        lines += metric_table(rows, key)
    lines += ["| paper's claim | paper | measured here (per seed) | holds on every seed |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['paper']} | {c['measured']} | "
              f"{'-' if c['holds'] is None else 'yes' if c['holds'] else 'no'} |" for c in found]
    lines += ["", "| judge | method | seed | pairs per iteration | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {r['judge']} | {r['arm']} | {r['seed']} | {' / '.join(map(str, r['pairs']))} | {r['seconds']} |"
              for r in rows]
    lines += ["", "![curves](curves.png)", ""]
    plot_curves(rows, output / "curves.png")
    atomic_write_text(output / "report.md", "\n".join(lines))
    atomic_write_json(output / "results.json", {"settings": asdict(settings), "rows": rows, "means": mean_rows(rows),
                                                "claims": found})


# --- the headline demo's row ---------------------------------------------------------------------------------------


def headline_prompts(num_pair_prompts: int) -> int:
    """Prompts per iteration of the headline INPO loop: a sixth of the demo's pair prompts (its three iterations
    sample about as many prompts as the on-policy pairs' half), between 64 and 512."""
    return max(64, min(512, num_pair_prompts // 6))


def write_eval(stage_dir: Path, report: dict, settings: DemoSettings) -> None:
    """The `eval.json` every demo row is read from (`SeedStages.evaluate`): the last iterate's accuracy and its
    rule-judge win rate against pi_0 (the SFT model)."""
    last = report["points"][-1]
    atomic_write_json(stage_dir / "eval.json", {
        "task": settings.task, "n": settings.eval_examples, "accuracy": last["accuracy"],
        "vs_baseline": {"win_rate": last["win_rate"], "standard_error": last["standard_error"]},
        "iterations": report["points"]})


def demo_stage(stages: SeedStages) -> dict:
    """INPO's row in `posttrain demo`: the INPO loop (rule judge, `ITERATIONS` iterations, K = 4) from the seed's
    SFT model, scaled with the demo's pair prompts; the row is its last iterate against SFT."""
    def run(stage_dir: Path) -> dict:
        prompts = headline_prompts(stages.settings.num_pair_prompts)
        report = run_arm_loop(stage_dir, stages, "inpo", "rule", prompts, 4, ITERATIONS)
        write_eval(stage_dir, report, stages.settings)
        return arm_row(stages, "rule", "inpo", report)

    return run_stage(stages.pipe, "inpo", run)


if __name__ == "__main__":
    print(json.dumps(run_inpo_comparison(), indent=1))
