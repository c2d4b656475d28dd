"""Proving-ground evidence for SRPO (docs/methods.md §2): win rate and accuracy by revision, in and out of distribution.

Per seed, from one SFT checkpoint and one set of on-policy pairs (`posttrain.demo.SeedStages`, the main demo's), SRPO,
DPO, RPO and the SFT-on-chosen control are trained with the same data and optimiser. Two more arms give the revision
template a meaning before preference training, as the paper's pretrained start does: `sft-revise`, the SFT model
further trained by SFT on x -> y_w, T(x, y_l) -> y_w and T(x, y_w) -> y_w for the same pairs (the positive control:
a model taught the template must not collapse when it revises), and `srpo@revise` / `dpo@revise`, SRPO and DPO on the
same pairs from `sft-revise`. Then every model, and the SFT model itself, answers greedily and revises its own answer
n times through the revision template the SRPO run saved (`posttrain.generation.revisions.generate_revisions`).
Each revision is scored by exact match and by the rule judge against the SFT model's revision-0 answer, on sort8's
held-out prompts (in distribution, ID) and on its shifted split (`posttrain.data.tasks.OOD_TASKS`, OOD). The paper's
claim: SRPO's win rate keeps rising with revisions, out of distribution too, while DPO's stays flat. Training and
every model's revisions are resumable pipeline stages: rerunning skips finished ones.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from posttrain.console import quiet_libraries, silent
from posttrain.data.proving_ground import proving_ground_rows
from posttrain.data.tasks import OOD_TASKS, get_task
from posttrain.demo import CONTROL, PAIRS, DemoSettings, SeedStages, demo_tiny_model, open_demo, run_stage, toy_recipe
from posttrain.errors import UsageError
from posttrain.evaluation.winrate import winrate_metrics
from posttrain.generation import SamplingParams, TransformersGenerator
from posttrain.generation.revisions import generate_revisions, revision_file
from posttrain.io import atomic_write_json, atomic_write_text, read_json, read_jsonl, write_jsonl
from posttrain.judges import RuleJudge
from posttrain.models import load_causal_lm, load_tokenizer
from posttrain.revision import RevisionTemplate, completion_text

TRAINED = ("srpo", "dpo", "rpo", CONTROL)
REVISE_START = "sft-revise"  # the positive control, and the revision-aware start of the `<method>@revise` arms
AT_REVISE = ("srpo@revise", "dpo@revise")
REVISE_DATA = "revise_sft.jsonl"
REVISED = ("sft", *TRAINED, REVISE_START, *AT_REVISE)  # sft first: its revision 0 is every model's reference
SPLITS = ("ID", "OOD")


def _train(stages: SeedStages, name: str) -> None:
    if name == CONTROL:
        stages.control()
    else:
        stages.preference(name, toy_recipe(name))


def revision_sft_rows(pairs: list[dict], template: RevisionTemplate) -> list[dict]:
    """The positive control's SFT rows, three per pair: x -> y_w, T(x, y_l) -> y_w (fix a wrong draft) and
    T(x, y_w) -> y_w (keep a right one); the revision prompts are `template.render`'s chat messages."""
    rows = []
    for pair in pairs:
        prompt, chosen = pair["prompt"], pair["chosen"]
        rows.append({"prompt": prompt, "completion": chosen})
        rows += [{"prompt": template.render(prompt, completion_text(draft)), "completion": chosen}
                 for draft in (pair["rejected"], chosen)]
    return rows


def _chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def check_revision_tokens(tokenizer, template: RevisionTemplate, prompt, draft: str, completion: list[dict]) -> None:
    """TRL's SFT tokenises a row's rendered chat, prompt and completion, as a whole; revision inference builds the
    prompt from separately tokenised pieces (`RevisionTemplate.prompt_ids`). Fail when the whole does not start with
    the pieces, i.e. tokens merge across the template's slots: SFT would train on other ids than the model sees."""
    pieces = template.prompt_ids(tokenizer, prompt, draft)
    if _chat_ids(tokenizer, template.render(prompt, draft) + completion)[:len(pieces)] != pieces:
        raise UsageError("the tokenizer merges tokens across the revision template's {prompt}/{draft} slots, so "
                         "SFT on rendered revision prompts would not train the ids revision inference uses; "
                         "put a space or newline on each side of the slots")


def _write_revision_sft(stages: SeedStages, template: RevisionTemplate, stage_dir: Path) -> dict:
    pairs = list(read_jsonl(stages.pipe.path("pairs") / PAIRS))
    tokenizer = load_tokenizer(str(stages.pipe.path("sft")))
    for pair in pairs:
        for draft in (pair["rejected"], pair["chosen"]):
            check_revision_tokens(tokenizer, template, pair["prompt"], completion_text(draft), pair["chosen"])
    rows = revision_sft_rows(pairs, template)
    write_jsonl(stage_dir / REVISE_DATA, rows)
    return {"pairs": len(pairs), "rows": len(rows)}


def train_revision_arms(stages: SeedStages, template: RevisionTemplate) -> None:
    """Stages `sft-revise-data` and `sft-revise` (the SFT toy recipe's settings on the revision rows, from the SFT
    model), then `srpo@revise` and `dpo@revise`: the toy recipes on the seed's pairs from `sft-revise`."""
    run_stage(stages.pipe, "sft-revise-data", partial(_write_revision_sft, stages, template),
              fingerprint={"template": template.text})
    stages.from_sft(REVISE_START, toy_recipe("sft"), stages.pipe.path("sft-revise-data") / REVISE_DATA)
    for name in AT_REVISE:
        method = name.split("@")[0]
        extra = {"revision_template": template.text} if method == "srpo" else {}
        stages.preference(name, toy_recipe(method), start=REVISE_START, **extra)


def saved_template(run_dir: Path) -> RevisionTemplate:
    """The revision template an SRPO run saved with its model."""
    template = RevisionTemplate.load(run_dir)
    if template is None:
        raise UsageError(f"{run_dir} has no revision template; rerun its SRPO training (remove the folder)")
    return template


def split_tasks(task_name: str) -> dict[str, str]:
    """{'ID': task, 'OOD': its shifted split}."""
    if task_name not in OOD_TASKS:
        raise UsageError(f"task {task_name!r} has no out-of-distribution split; choose one of {', '.join(OOD_TASKS)}")
    return {"ID": task_name, "OOD": OOD_TASKS[task_name]}


def _outputs(folder: Path, revision: int) -> list[str]:
    return [row["output"] for row in read_json(revision_file(folder, revision))]


def revise_stage(stages: SeedStages, name: str, task_name: str, template: RevisionTemplate, revisions: int,
                 examples: int) -> dict:
    """Stage `revise/<name>/<task>`: model `name`'s greedy revisions 0..n of the task's first `examples` held-out
    prompts, with their accuracy and rule-judge win rate against the SFT model's revision 0 (per revision)."""
    task, reference_dir = get_task(task_name), stages.pipe.path(f"revise/sft/{task_name}")
    rows = proving_ground_rows(f"{task_name}/sft", "test", examples)
    answers, instructions = [r["answer"] for r in rows], [r["prompt"][0]["content"] for r in rows]

    def run(stage_dir: Path) -> dict:
        model_dir = str(stages.pipe.path(name))
        tokenizer = load_tokenizer(model_dir)
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=task.num_digits + 4)
        outputs = generate_revisions(TransformersGenerator(load_causal_lm(model_dir), tokenizer),
                                     [r["prompt"] for r in rows], template, tokenizer, params, revisions, stage_dir,
                                     name=name, model_path=model_dir, progress=False)
        reference = outputs[0] if name == "sft" else _outputs(reference_dir, 0)
        judged = [winrate_metrics(RuleJudge(task.score).judge(instructions, reference, out, answers))
                  for out in outputs]
        return {"accuracy": [sum(map(task.score, out, answers)) / len(rows) for out in outputs],
                "win_rate": [j["win_rate"] for j in judged], "win_rate_se": [j["standard_error"] for j in judged]}

    fingerprint = {"revisions": revisions, "template": template.text, "examples": len(rows)}
    return run_stage(stages.pipe, f"revise/{name}/{task_name}", run, fingerprint=fingerprint)


def seed_rows(stages: SeedStages, tiny: Path, revisions: int, examples: int) -> list[dict]:
    """Train every method for one seed, revise with every model in and out of distribution; one row each."""
    stages.prepare(tiny)
    for name in TRAINED:
        _train(stages, name)
    template = saved_template(stages.pipe.path("srpo"))
    train_revision_arms(stages, template)
    rows = []
    for split, task_name in split_tasks(stages.settings.task).items():
        for name in REVISED:
            scores = revise_stage(stages, name, task_name, template, revisions, examples)
            rows.append({"method": name, "seed": stages.seed, "split": split, "task": task_name, **scores})
    return rows


def mean_rows(rows: list[dict]) -> list[dict]:
    """Per (method, split), the seeds' mean accuracy and win rate at every revision (seed 'mean')."""
    means = []
    for method, split in dict.fromkeys((r["method"], r["split"]) for r in rows):
        mine = [r for r in rows if (r["method"], r["split"]) == (method, split)]
        means.append({"method": method, "seed": "mean", "split": split, "task": mine[0]["task"],
                      **{key: [sum(values) / len(mine) for values in zip(*(r[key] for r in mine))]
                         for key in ("accuracy", "win_rate")}})
    return means


@silent()
@quiet_libraries()
def run_srpo_comparison(output: str = "runs/demo-srpo", seeds: tuple[int, ...] = (0, 1), task_name: str = "sort8",
                        num_pair_prompts: int = 3000, eval_examples: int = 500, revisions: int = 5,
                        revision_examples: int = 200) -> dict:
    """Every seed's stages, then `<output>/report.md`, `results.json` and the two PNG plots; returns the results.
    `eval_examples` is the main demo's setting (each training run's own evaluation); the revisions are scored on
    `revision_examples` held-out prompts per split."""
    if revisions < 1 or revision_examples < 1:
        raise UsageError(f"revisions and revision_examples must be at least 1, got {revisions} and "
                         f"{revision_examples}")
    tasks = split_tasks(task_name)
    settings = DemoSettings(task_name, num_pair_prompts, eval_examples)
    pipe = open_demo(output, settings)
    tiny = demo_tiny_model(pipe)
    rows = [row for seed in seeds
            for row in seed_rows(SeedStages(pipe, seed, settings), tiny, revisions, revision_examples)]
    results = {"tasks": tasks, "seeds": list(seeds), "revisions": revisions, "revision_examples": revision_examples,
               "template": saved_template(pipe.path(f"seed{seeds[0]}/srpo")).text, "rows": rows,
               "means": mean_rows(rows)}
    write_report(Path(output), results)
    return results


def _label(method: str) -> str:
    return {CONTROL: f"{CONTROL} (control)", REVISE_START: f"{REVISE_START} (positive control)"}.get(method, method)


def revision_table(results: dict, key: str, spec: str) -> list[str]:
    """A markdown table of `key` per method, split and seed (and mean), one column per revision."""
    n = results["revisions"]
    lines = ["| method | split | seed | " + " | ".join(f"rev {k}" for k in range(n + 1)) + " |",
             "|---|---|---|" + "---|" * (n + 1)]
    for mean in results["means"]:
        seeds = [r for r in results["rows"] if (r["method"], r["split"]) == (mean["method"], mean["split"])]
        for row in [*seeds, mean]:
            cells = " | ".join(format(v, spec) for v in row[key])
            lines.append(f"| {_label(row['method'])} | {row['split']} | {row['seed']} | {cells} |")
    return lines


def plot_by_revision(results: dict, key: str, path: Path, ylabel: str) -> None:
    """One panel per split: the seeds' mean `key` against the revision, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posttrain.evaluation.report import save_figure

    fig, axes = plt.subplots(1, len(SPLITS), figsize=(5 * len(SPLITS), 3.6), layout="constrained", sharey=True)
    for ax, split in zip(axes, SPLITS):
        for mean in [m for m in results["means"] if m["split"] == split]:
            style = "--" if "revise" in mean["method"] else "-"  # the revision-aware arms
            ax.plot(range(len(mean[key])), mean[key], style, marker="o", label=_label(mean["method"]))
        ax.set_title(f"{split}: {results['tasks'][split]}")
        ax.set_xlabel("revision")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))  # outside: lines overlap
    fig.suptitle(f"{ylabel} by revision (mean of seeds {', '.join(map(str, results['seeds']))})")
    save_figure(fig, path)
    plt.close(fig)


def write_report(output: Path, results: dict) -> None:
    plot_by_revision(results, "win_rate", output / "winrate_by_revision.png", "rule-judge win rate vs SFT rev 0")
    plot_by_revision(results, "accuracy", output / "accuracy_by_revision.png", "exact-match accuracy")
    tasks = results["tasks"]
    text = "\n".join([
        f"# SRPO on the proving ground: revisions 0..{results['revisions']}, in and out of distribution", "",
        f"Per seed, one SFT checkpoint and one set of on-policy pairs; SRPO, DPO, RPO and SFT on the chosen answers "
        f"trained with the same data and optimiser (their toy recipes). `{REVISE_START}` (positive control): the SFT "
        f"model further trained by SFT on x -> y_w, T(x, y_l) -> y_w and T(x, y_w) -> y_w for the same pairs; "
        f"{' and '.join(f'`{n}`' for n in AT_REVISE)}: the toy recipes on the same pairs from `{REVISE_START}` (the "
        f"paper's regime, a start model for which the revision instruction means something). Every model, and SFT, "
        f"revises its own greedy answer through the template the SRPO run saved ({results['template']!r}); SRPO and "
        f"the `{REVISE_START}` family were trained on it, the others see it for the first time. "
        f"{results['revision_examples']} held-out prompts each of {tasks['ID']} (ID) and {tasks['OOD']} (OOD). "
        "Win rate: the rule judge (exact match) against the seed's SFT model at revision 0; ties count half.", "",
        "## Rule-judge win rate vs SFT (revision 0), %", "", *revision_table(results, "win_rate", ".1f"), "",
        "![win rate by revision](winrate_by_revision.png)", "",
        "## Exact-match accuracy", "", *revision_table(results, "accuracy", ".3f"), "",
        "![accuracy by revision](accuracy_by_revision.png)", ""])
    atomic_write_text(output / "report.md", text)
    atomic_write_json(output / "results.json", results)
