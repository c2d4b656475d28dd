"""Proving ground for causal-traced, layer-frozen unlearning (docs/methods.md §5.4): trace -> unlearn 4 ways -> score.

Shared stages: `facts-sft` (an 8-layer tiny Llama taught the 600 facts of pg:facts/all, recipes/sft/
facts_tiny8_cpu.yaml), `data` (the scored sets: forget and retain rows in LUME form, holdout documents for the
membership attack), `trace` (`posttrain.tracing` on the forget facts: trace.json, heatmaps, the suggested layers) and
`before` (the facts model scored). Per seed under `seed<k>/`, at one step budget (the unlearn toy recipe's epochs,
batch and learning rate for every arm), four arms unlearn the forget people from the facts model:

- `traced`: the paper's loss on the MLPs of the traced layers (`unlearn_layers: auto`);
- `random`: the same on as many layers drawn at random (seeded; outside the traced set when there is room);
- `gd-full`: gradient difference on every parameter;  `npo-full`: NPO (+ retain CE) on every parameter;

each followed by `<arm>-eval` (`evaluate_unlearning`, no MMLU: see `posttrain.demo_unlearn_report`). The facts model
and its trace are shared by the seeds; a seed changes the data order and the random layers. Writes report.md,
results.json; a rerun skips every finished stage.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from posttrain.console import quiet_libraries, silent
from posttrain.demo import REPO, open_demo, run_stage, toy_recipe, train_stage
from posttrain.demo_unlearn_report import claim, claim_table, compact_row, mean_rows, metric_table
from posttrain.errors import UsageError
from posttrain.io import atomic_write_json, atomic_write_text, write_jsonl
from posttrain.pipeline import Pipeline

FACTS_RECIPE = str(REPO / "recipes/sft/facts_tiny8_cpu.yaml")
# arm -> overrides of the unlearn toy recipe (`random`'s layers are drawn per seed)
ARMS: dict[str, dict] = {"traced": {"unlearn_loss": "joint", "unlearn_layers": "auto"},
                         "random": {"unlearn_loss": "joint"},
                         "gd-full": {"unlearn_loss": "gd", "unlearn_layers": "full"},
                         "npo-full": {"unlearn_loss": "npo", "unlearn_layers": "full"}}


@dataclass(frozen=True)
class UnlearnDemoSettings:
    """Sizes of the demo; None keeps the recipe's value."""

    facts_model: str | None = None  # a facts model trained already (by the facts recipe): skips stage facts-sft
    sft_epochs: int | None = None
    trace_facts: int = 60  # forget facts traced (all 60 by default)
    trace_window: int = 2  # MLP/attention restoration window: ROME's 10 would span all 8 layers
    unlearn_epochs: float | None = None
    learning_rate: float | None = None
    retain_eval_facts: int | None = None  # retain facts scored (all 540 by default)
    max_new_tokens: int = 8  # answers are 1-3 tokens and a period; the task's 256 only adds babble to score

    def __post_init__(self):
        for name in ("sft_epochs", "trace_facts", "trace_window", "unlearn_epochs", "retain_eval_facts",
                     "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"{name} must be positive, got {value}")


def random_layers(traced: list[int], num_layers: int, seed: int) -> list[int]:
    """As many layers as `traced`, drawn with `seed` from the others (from all layers when too few are left)."""
    others = [layer for layer in range(num_layers) if layer not in traced]
    pool = others if len(others) >= len(traced) else list(range(num_layers))
    return sorted(random.Random(seed).sample(pool, len(traced)))


def _given(**values) -> dict:
    return {key: value for key, value in values.items() if value is not None}


class UnlearnStages:
    """The demo's stages under one pipeline root."""

    def __init__(self, pipe: Pipeline, settings: UnlearnDemoSettings):
        self.pipe, self.settings = pipe, settings

    @property
    def model(self) -> str:
        return self.settings.facts_model or str(self.pipe.path("facts-sft"))

    def prepare(self) -> dict:
        """Stages facts-sft (unless a facts model is given), data and trace; returns the trace's summary."""
        if self.settings.facts_model is None:
            tiny = self.pipe.root / "tiny-llama8"  # built by the facts recipe when missing
            train_stage(self.pipe, "facts-sft", FACTS_RECIPE, model_name_or_path=str(tiny),
                        **_given(num_train_epochs=self.settings.sft_epochs))
        run_stage(self.pipe, "data", self._write_data)
        return run_stage(self.pipe, "trace", self._trace)

    def _write_data(self, stage_dir: Path) -> dict:
        """forget.jsonl and retain.jsonl as LUME rows (an sc and a qa row per fact), holdout.jsonl documents."""
        from posttrain.data.proving_ground import proving_ground_rows

        counts = {}
        for split, limit in (("forget", None), ("retain", self.settings.retain_eval_facts)):
            facts = proving_ground_rows(f"facts/{split}", n=limit)
            write_jsonl(stage_dir / f"{split}.jsonl",
                        [{"id": f"{split}{i}{kind}0", "task": "facts", "input": f["prompt"], "output": f["completion"]}
                         for i, f in enumerate(facts) for kind in ("sc", "qa")])
            counts[split] = len(facts)
        holdout = proving_ground_rows("facts/holdout")
        write_jsonl(stage_dir / "holdout.jsonl", [{"document": f["prompt"] + f["completion"]} for f in holdout])
        return {**counts, "holdout": len(holdout)}

    def _trace(self, stage_dir: Path) -> dict:
        from posttrain.data.proving_ground import proving_ground_rows
        from posttrain.models import load_causal_lm, load_tokenizer
        from posttrain.tracing import TraceConfig, run_trace

        facts = proving_ground_rows("facts/forget", n=self.settings.trace_facts)
        config = TraceConfig(window=self.settings.trace_window)
        summary = run_trace(load_causal_lm(self.model), load_tokenizer(self.model), facts, stage_dir, config,
                            self.model)
        if not summary["suggested_layers"]:
            raise UsageError(f"the trace in {stage_dir} suggests no layers ({summary['num_known']} of "
                             f"{summary['num_facts']} facts known): the facts model has not learned the facts; "
                             "train it longer (sft_epochs)")
        return {key: summary[key] for key in ("suggested_layers", "suggestion", "num_facts", "num_known",
                                              "p_clean", "p_corrupted", "num_layers")}

    def evaluate(self, name: str, model: str, pipe: Pipeline | None = None) -> dict:
        """Stage `name` (of `pipe`, else the root): the LUME scores of `model` on the facts sets (greedy; MIA
        against the holdout documents; no MMLU)."""
        from posttrain.evaluation.unlearning_run import UnlearningEval, evaluate_unlearning

        data = self.pipe.path("data")

        def run(stage_dir: Path) -> dict:
            cfg = UnlearningEval(output_dir=str(stage_dir), model=model, forget=str(data / "forget.jsonl"),
                                 retain=str(data / "retain.jsonl"), mia_nonmembers=str(data / "holdout.jsonl"),
                                 max_new_tokens=self.settings.max_new_tokens, backend="transformers",
                                 skip_mmlu=True)
            return compact_row(evaluate_unlearning(cfg))

        return run_stage(pipe or self.pipe, name, run)

    def arm(self, seed: int, arm: str, layers: list[int] | str, trace_file: str) -> dict:
        """Stages seed<k>/<arm> (unlearning from the facts model) and seed<k>/<arm>-eval; returns the eval row
        and the steps trained."""
        pipe = self.pipe.sub(f"seed{seed}")
        overrides = {**ARMS[arm], **({} if isinstance(layers, str) else {"unlearn_layers": ",".join(map(str, layers))})}
        summary = train_stage(pipe, arm, toy_recipe("unlearn"), model_name_or_path=self.model, trace_file=trace_file,
                              seed=seed, **overrides, **_given(num_train_epochs=self.settings.unlearn_epochs,
                                                               learning_rate=self.settings.learning_rate))
        return {**self.evaluate(f"{arm}-eval", str(pipe.path(arm)), pipe), "steps": summary["steps"]}


def arm_layers(arm: str, trace: dict, seed: int) -> list[int] | str:
    """The layers an arm trains: the traced ones, a seeded random draw of as many, or `full`."""
    if arm == "traced":
        return trace["suggested_layers"]
    if arm == "random":
        return random_layers(trace["suggested_layers"], trace["num_layers"], seed)
    return "full"


def run_arms(stages: UnlearnStages, seeds: tuple[int, ...], arms=tuple(ARMS)) -> tuple[dict, dict, list[dict]]:
    """The shared stages, then every arm for every seed: (trace summary, before row, per-seed rows)."""
    trace = stages.prepare()
    before = stages.evaluate("before", stages.model)
    trace_file = str(stages.pipe.path("trace") / "trace.json")
    rows = []
    for seed in seeds:
        for arm in arms:
            layers = arm_layers(arm, trace, seed)
            row = {"arm": arm, "seed": seed, "layers": layers, **stages.arm(seed, arm, layers, trace_file)}
            rows.append({**row, **claim(row, before)})
    return trace, before, rows


@silent()
@quiet_libraries()
def run_unlearn_comparison(output: str = "runs/demo-unlearn", seeds: tuple[int, ...] = (0, 1),
                           settings: UnlearnDemoSettings | None = None) -> dict:
    """Trace, unlearn four ways per seed, score; write `<output>/report.md` and `results.json`; return results."""
    settings = settings or UnlearnDemoSettings()
    stages = UnlearnStages(open_demo(output, settings), settings)
    trace, before, rows = run_arms(stages, seeds)
    results = {"settings": asdict(settings), "seeds": list(seeds), "trace": trace, "before": before, "rows": rows,
               "means": mean_rows(rows, before)}
    _write_report(Path(output), results)
    return results


# The headline demo's part (`posttrain demo`): the traced arm only, on a facts model trained 40 epochs (it already
# knows every fact then) and traced on 20 forget facts, to keep the demo's added time small.
HEADLINE_SETTINGS = UnlearnDemoSettings(sft_epochs=40, trace_facts=20)


def headline_unlearning(output: str, seeds: tuple[int, ...]) -> dict:
    """The traced arm per seed under `output` (resumable): {before, rows, means} for the headline report."""
    stages = UnlearnStages(open_demo(output, HEADLINE_SETTINGS), HEADLINE_SETTINGS)
    _, before, rows = run_arms(stages, seeds, arms=("traced",))
    return {"before": before, "rows": rows, "means": mean_rows(rows, before)}


def _write_report(output: Path, results: dict) -> None:
    trace = results["trace"]
    text = "\n".join([
        "# Unlearning on the proving ground: traced layers vs random layers vs gradient difference vs NPO", "",
        f"The 8-layer facts model knows 600 facts of 200 people; 20 people (60 facts) are forgotten. Trace "
        f"(`trace/`, {trace['num_known']} of {trace['num_facts']} forget facts known; P(answer) clean "
        f"{trace['p_clean']:.3f}, corrupted {trace['p_corrupted']:.3f}): suggested layers "
        f"{trace['suggested_layers']} ({trace['suggestion']['share']:.0%} of the MLP effect at the last subject "
        "token). Every arm: the unlearn toy recipe's epochs, batch and learning rate (recipes/unlearn/"
        "facts_tiny_cpu.yaml), from the same facts model. Scores: greedy, LUME metrics (forget columns raw: lower "
        "is better); MIA members = forget documents, non-members = holdout documents (never trained); no MMLU "
        "(meaningless for this model). General ability = exp(holdout NLL before - after).", "",
        *metric_table(results["before"], results["rows"], results["means"]), "",
        "## The paper's claim: forget regurgitation falls >= 80%, retain and general ability keep >= 90%", "",
        *claim_table(results["means"]), ""])
    atomic_write_text(output / "report.md", text)
    atomic_write_json(output / "results.json", results)


if __name__ == "__main__":
    print(json.dumps(run_unlearn_comparison(), indent=1))
