"""The proving-ground demo: every registered preference method against SFT and an SFT-on-chosen control, per seed.

Stages (`posttrain.pipeline`; rerunning skips finished ones and resumes interrupted training from its newest
checkpoint): `tiny-llama` (the from-scratch model), then per seed under `seed<k>/`: `sft`, `pairs` (sampled from the
SFT model), one stage per demo method, `sft-on-chosen` (the control) and `eval` (the judged results). A demo method is
a registered method with dataset kind `preference` and a `toy_recipe`, trained on the seed's on-policy pairs from its
SFT checkpoint; a method needing other data plugs its own stage into `CUSTOM_STAGES`. Ends with one headline table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import yaml

from posttrain.console import quiet_libraries, silent
from posttrain.data.pairs import sample_preference_pairs
from posttrain.data.proving_ground import proving_ground_rows
from posttrain.data.tasks import get_task, tokenizer_corpus
from posttrain.errors import UsageError
from posttrain.generation import SamplingParams, TransformersGenerator
from posttrain.io import atomic_write_json, atomic_write_text, read_json, write_jsonl
from posttrain.models import load_causal_lm, load_tokenizer, make_tiny_model
from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe
from posttrain.registry import METHODS, get_method, import_string
from posttrain.train import train

REPO = Path(__file__).resolve().parents[1]
CONTROL = "sft-on-chosen"
PAIRS, CHOSEN = "pairs.jsonl", "chosen_sft.jsonl"
# The control copies these settings from the DPO toy recipe, so it differs from DPO only in its loss.
CONTROL_KEYS = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "lr_scheduler_type")
Callbacks = Callable[[Path], list] | None  # run directory -> trainer callbacks, built only when the stage runs


@dataclass(frozen=True)
class DemoSettings:
    task: str = "sort8"
    num_pair_prompts: int = 3000
    eval_examples: int = 500


def toy_recipe(method: str) -> str:
    """The absolute path of a registered method's proving-ground recipe."""
    recipe = get_method(method).toy_recipe
    if recipe is None:
        raise UsageError(f"method {method!r} has no toy recipe for the demo")
    return str(REPO / recipe)


def control_overrides() -> dict:
    """SFT on the chosen answers with the DPO toy recipe's optimiser settings (no warmup, as DPO)."""
    dpo = yaml.safe_load(Path(toy_recipe("dpo")).read_text())
    return {**{key: dpo[key] for key in CONTROL_KEYS}, "warmup_steps": 0}


def run_stage(pipe: Pipeline, name: str, fn: Callable[[Path], object], **options):
    """`pipe.stage`, printing one line when the stage ran (the pipeline prints its own when it skips one). Inside
    a demo, training prints nothing else (`posttrain.console.silent`)."""
    started, ran = time.monotonic(), []

    def timed(stage_dir: Path):
        ran.append(stage_dir)
        return fn(stage_dir)

    result = pipe.stage(name, timed, **options)
    if ran:
        print(f"posttrain: stage {pipe.path(name)} done in {time.monotonic() - started:.0f} s", flush=True)
    return result


def train_stage(pipe: Pipeline, name: str, recipe_path: str, callbacks: Callbacks = None, **overrides) -> dict:
    """Stage `name`: train `recipe_path` into the stage folder; its result is the run summary `train` records."""

    def run(stage_dir: Path) -> Path:
        recipe = load_recipe(recipe_path, output_dir=str(stage_dir), **overrides)
        return train(recipe, callbacks(stage_dir) if callbacks else None)

    return run_stage(pipe, name, run)


def demo_tiny_model(pipe: Pipeline) -> Path:
    """The from-scratch starting point every demo seed shares: stage `tiny-llama`, built once."""
    run_stage(pipe, "tiny-llama", lambda d: make_tiny_model(d, tokenizer_corpus(), family="llama", seed=0))
    return pipe.path("tiny-llama")


class SeedStages:
    """One seed's stages under `<root>/seed<k>`: sft, pairs, one per method, the control, eval."""

    def __init__(self, root: Pipeline, seed: int, settings: DemoSettings):
        self.pipe, self.seed, self.settings = root.sub(f"seed{seed}"), seed, settings
        self.common = {"seed": seed, "eval_task": settings.task, "eval_num_examples": settings.eval_examples}

    def prepare(self, tiny: Path) -> dict:
        """Stages `sft` (from the tiny model) and `pairs`; returns the pair statistics."""
        train_stage(self.pipe, "sft", toy_recipe("sft"), model_name_or_path=str(tiny), **self.common)
        return run_stage(self.pipe, "pairs", self._sample_pairs)

    def _sample_pairs(self, stage_dir: Path) -> dict:
        """Sample 4 answers per prompt from the SFT model; pair a correct one (chosen) with a wrong one (rejected)."""
        task, sft = get_task(self.settings.task), str(self.pipe.path("sft"))
        generator = TransformersGenerator(load_causal_lm(sft), load_tokenizer(sft))
        rows = proving_ground_rows(f"{self.settings.task}/sft", "train", self.settings.num_pair_prompts,
                                   seed=self.seed + 1)
        params = SamplingParams(n=4, temperature=1.0, top_k=10, max_new_tokens=task.num_digits + 4, seed=self.seed)
        pairs, stats = sample_preference_pairs(generator, rows, task.score, params, self.seed)
        write_jsonl(stage_dir / PAIRS, pairs)
        write_jsonl(stage_dir / CHOSEN, [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs])
        return stats

    def preference(self, name: str, recipe: str, callbacks: Callbacks = None, start: str = "sft",
                   **overrides) -> dict:
        """Stage `name`: `recipe` on this seed's pairs from its `start` checkpoint (SFT unless another of this
        seed's stages is named), judged against the SFT model."""
        return self.from_sft(name, recipe, self.pipe.path("pairs") / PAIRS, callbacks, start, **overrides)

    def control(self, callbacks: Callbacks = None) -> dict:
        """Stage `sft-on-chosen`: SFT on the chosen answers of the same pairs, with DPO's optimiser settings."""
        return self.from_sft(CONTROL, toy_recipe("sft"), self.pipe.path("pairs") / CHOSEN, callbacks,
                             **control_overrides())

    def from_sft(self, name: str, recipe: str, data: Path, callbacks: Callbacks = None, start: str = "sft",
                 **overrides) -> dict:
        """Stage `name`: `recipe` on `data`, starting from this seed's stage `start` (its SFT model unless told
        otherwise) and judged against its SFT model."""
        sft, model = str(self.pipe.path("sft")), str(self.pipe.path(start))
        return train_stage(self.pipe, name, recipe, callbacks, model_name_or_path=model, dataset_name=str(data),
                           eval_baseline_model=sft, dataset_num_examples=100000, **self.common, **overrides)

    def evaluate(self, names: list[str]) -> list[dict]:
        """Stage `eval`: one judged row for SFT and for each named stage (accuracy, change, win rate vs SFT)."""
        return run_stage(self.pipe, "eval", lambda d: self._judged_rows(names), fingerprint=names)

    def _judged_rows(self, names: list[str]) -> list[dict]:
        sft = read_json(self.pipe.path("sft") / "eval.json")["accuracy"]
        rows = [{"method": "sft", "seed": self.seed, "accuracy": sft, "change_points": None,
                 "win_rate_vs_sft": None, "win_rate_se": None}]
        for name in names:
            evaluation = read_json(self.pipe.path(name) / "eval.json")
            rows.append({"method": name, "seed": self.seed, "accuracy": evaluation["accuracy"],
                         "change_points": 100 * (evaluation["accuracy"] - sft),
                         "win_rate_vs_sft": evaluation["vs_baseline"]["win_rate"],
                         "win_rate_se": evaluation["vs_baseline"]["standard_error"]})
        return rows


def _imported_stage(stages: SeedStages, path: str) -> dict:
    """A stage defined in a module that imports this one (`module:function`), imported only when it runs."""
    return import_string(path)(stages)


# method name -> its demo stage, for methods whose demo needs other data than the seed's on-policy pairs.
CUSTOM_STAGES: dict[str, Callable[[SeedStages], dict]] = {
    "dypo": partial(_imported_stage, path="posttrain.demo_dypo:demo_stage"),  # verifiable prompts, teacher traces
    "inpo": partial(_imported_stage, path="posttrain.demo_inpo:demo_stage"),  # the loop, 3 iterations, own samples
}


def demo_methods() -> dict[str, Callable[[SeedStages], dict]]:
    """Every method the demo trains, with its stage: custom ones, and preference methods with a toy recipe."""
    on_pairs = {m.name: partial(_on_pairs, name=m.name) for m in METHODS.values()
                if m.dataset_kind == "preference" and m.toy_recipe}
    return {**on_pairs, **CUSTOM_STAGES}


def _on_pairs(stages: SeedStages, name: str) -> dict:
    return stages.preference(name, toy_recipe(name))


def open_demo(output: str, settings: DemoSettings) -> Pipeline:
    """The demo's pipeline at `output`; a one-line error if it already holds a run with other settings."""
    pipe = Pipeline(output)
    recorded = pipe.stage("settings", lambda d: asdict(settings))
    if recorded != asdict(settings):
        raise UsageError(f"{output} holds a demo run with other settings ({recorded}); pass another --output or "
                         f"remove it")
    return pipe


@silent()
@quiet_libraries()
def run_demo(output: str = "runs/demo", seeds: tuple[int, ...] = (0, 1), task_name: str = "sort8",
             num_pair_prompts: int = 3000, eval_examples: int = 500, unlearning: bool = False) -> dict:
    """Run every seed's stages; write `<output>/report.md` and `results.json`; return the results. `unlearning`
    (on in `posttrain demo`) adds the unlearning method on the facts task under `<output>/unlearn`, a table of its
    own (`posttrain.demo_unlearn.headline_unlearning`)."""
    settings = DemoSettings(task_name, num_pair_prompts, eval_examples)
    pipe = open_demo(output, settings)
    tiny, methods = demo_tiny_model(pipe), demo_methods()
    rows, pairs = [], {}
    for seed in seeds:
        stages = SeedStages(pipe, seed, settings)
        pairs[seed] = stages.prepare(tiny)["pairs"]
        for stage in methods.values():
            stage(stages)
        stages.control()
        rows += stages.evaluate([*methods, CONTROL])
    results = {**asdict(settings), "seeds": list(seeds), "pairs": pairs, "rows": rows, "means": mean_rows(rows)}
    if unlearning:
        from posttrain.demo_unlearn import headline_unlearning

        results["unlearning"] = headline_unlearning(str(pipe.path("unlearn")), seeds)
    _write_demo_report(Path(output), results)
    return results


def mean_rows(rows: list[dict]) -> list[dict]:
    """One row per method averaging accuracy, change and win rate over its seeds (seed 'mean')."""
    keys = ("accuracy", "change_points", "win_rate_vs_sft")
    means = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        means.append({"method": method, "seed": "mean", "win_rate_se": None,
                      **{k: None if mine[0][k] is None else sum(r[k] for r in mine) / len(mine) for k in keys}})
    return means


def _cell(value, spec: str, se=None) -> str:
    if value is None:
        return ""
    return format(value, spec) + ("" if se is None else f" ± {se:.1f}")


def headline_table(results: dict) -> list[str]:
    """The demo's one table (markdown): per method, each seed and the mean over seeds."""
    lines = ["| method | seed | accuracy | change vs SFT (pts) | rule-judge win rate vs SFT |", "|---|---|---|---|---|"]
    for mean in results["means"]:
        label = f"{mean['method']} (control)" if mean["method"] == CONTROL else mean["method"]
        for r in [r for r in results["rows"] if r["method"] == mean["method"]] + [mean]:
            lines.append(f"| {label} | {r['seed']} | {r['accuracy']:.3f} | {_cell(r['change_points'], '+.1f')} | "
                         f"{_cell(r['win_rate_vs_sft'], '.1f', r['win_rate_se'])} |")
    return lines


def unlearning_lines(results: dict) -> list[str]:
    """The unlearning table under the headline table, when the run has one."""
    if not results.get("unlearning"):
        return []
    from posttrain.demo_unlearn_report import headline_lines

    return headline_lines(results["unlearning"])


def _write_demo_report(output: Path, results: dict) -> None:
    pairs = ", ".join(f"seed {seed}: {n}" for seed, n in results["pairs"].items())
    text = "\n".join([
        f"# Proving-ground demo: {results['task']}", "",
        "Per seed: SFT from scratch, then each preference method on the SFT model's own samples (chosen = correct, "
        "rejected = wrong) from that SFT checkpoint, and SFT on the chosen answers as a control (the DPO toy recipe's "
        f"lr, epochs and batch). Greedy exact match on {results['eval_examples']} held-out prompts; win rate by the "
        f"rule judge against the seed's SFT model. On-policy pairs: {pairs}. Stage reports: `seed*/*/report.md`.",
        "", *headline_table(results), "", *unlearning_lines(results)])
    atomic_write_text(output / "report.md", text)
    atomic_write_json(output / "results.json", results)
