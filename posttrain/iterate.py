"""`posttrain iterate`: INPO's outer loop (docs/methods.md §3), or iterative DPO with `method: dpo`, resumable in
every phase.

pi_0 is the recipe's `model_name_or_path`. Iteration t (folder `<output_dir>/iter<t>/`) trains pi_{t+1} from pi_t:

    sample      K samples per prompt from pi_t (the Generator; vLLM when installed unless the recipe says otherwise)
    judge       rank each prompt's samples with the recipe's pairwise judge (tournament or all pairs)
    pairs       best sample = chosen, worst = rejected -> pairs.jsonl
    precompute  build the trainer once in this process: pi_t's (and for INPO pi_0's) log-probs go to the N-way cache
    train       `[accelerate launch] posttrain train` on the derived recipe train.yaml, one epoch, into iter<t>/train
    merge       LoRA only: the adapter merged into pi_t, so pi_{t+1} is a plain model (merged, not stacked)
    evaluate    pi_{t+1} vs pi_0: the eval judge's win rate, the task accuracy (eval_task) and mean output length

Each phase is a `posttrain.pipeline` stage: its outputs are written atomically, then its completion record, so a
rerun after a kill skips finished phases and resumes the killed one. With `method: dpo` the reference of
iteration t is pi_t (the model it starts from); with `method: inpo` the trainer reads pi_t's and (from iteration 1
on, as reference_model) pi_0's log-probs from the cache.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from posttrain import iterate_phases as phases
from posttrain.errors import UsageError
from posttrain.io import atomic_write_text
from posttrain.pipeline import Pipeline, as_json
from posttrain.ranking import SCHEMES
from posttrain.recipe import Recipe

# Keys a rerun may change without mixing two experiments in one output folder.
FREE_KEYS = ("iterations", "verbose", "accelerate_config", "tensor_parallel_size", "auto_resume")
BACKENDS = ("auto", "vllm", "transformers")


class Loop:
    """The loop of one recipe: its stages under `output_dir`, the models pi_t and the judges."""

    def __init__(self, recipe: Recipe):
        self.recipe, self.loop, self.run = recipe, recipe.loop, recipe.run
        self.root = Path(recipe.training.output_dir)
        self.pipe = Pipeline(self.root)
        self.pi0 = recipe.model.model_name_or_path

    # -- models and data --

    def policy(self, t: int) -> str:
        """pi_t: pi_0, or the model iteration t-1 trained (its merged copy under LoRA)."""
        if t == 0:
            return self.pi0
        previous = self.pipe.sub(f"iter{t - 1}")
        return str(previous.path("merge") / "model" if self.recipe.model.use_peft else previous.path("train"))

    def prompt_rows(self, t: int) -> list[dict]:
        """The prompts of iteration t: rows t*N..(t+1)*N-1 of prompt_dataset (new each iteration, as the paper), or
        its first N rows every iteration."""
        n = self.loop.prompts_per_iteration
        first = t * n if self.loop.new_prompts_each_iteration else 0
        return self.prompt_rows_through(t)[first:first + n]

    def prompt_rows_through(self, t: int) -> list[dict]:
        """Every prompt row of iterations 0..t, read in one load."""
        n = self.loop.prompts_per_iteration
        count = (t + 1) * n if self.loop.new_prompts_each_iteration else n
        return load_rows(self.loop.prompt_dataset, "prompt_dataset", self.loop.prompt_split, count,
                         self.loop.prompt_seed)

    def eval_rows(self) -> list[dict]:
        return load_rows(self.loop.eval_prompt_dataset or self.loop.prompt_dataset, "eval_prompt_dataset",
                         self.loop.eval_prompt_split, self.loop.eval_num_prompts, self.run.dataset_seed)

    def generator(self, source: str) -> phases.LazyModel:
        return phases.policy_generator(source, self.loop, bool(self.recipe.training.trust_remote_code))

    def judge(self, spec: str):
        """(judge, its cache config) for `spec`; an llm: judge's model loads only when it first judges."""
        from posttrain.generation import ModelPool

        backend = self.loop.judge_backend or self.loop.generation_backend
        judge = make_judge(spec, ModelPool(backend, self.loop.sample_batch_size), self.loop)
        return judge, {"judge": spec, "seed": self.loop.judge_seed, "labels": self.loop.judge_labels,
                       "backend": backend}

    # -- the iteration's recipe --

    def train_recipe(self, t: int) -> Path:
        """iter<t>/train.yaml: the recipe's own keys with the model pi_t, this iteration's pairs, one epoch (unless
        max_steps is set), no post-training eval (the evaluate phase judges) and, for INPO from t = 1 on, pi_0 as
        reference_model (at t = 0, pi_ref = pi_t: no second model)."""
        it = self.pipe.sub(f"iter{t}")
        values = {k: getattr(v, "value", v) for k, v in self.recipe.given.items()}
        for key in ("dataset_num_examples", "eval_baseline_model", "reference_model", "resume_from_checkpoint"):
            values.pop(key, None)
        values.update(model_name_or_path=self.policy(t), dataset_name=str(it.path("pairs") / phases.PAIRS),
                      dataset_train_split="train", output_dir=str(it.path("train")), num_train_epochs=1,
                      eval_task="none", build_tiny_model_if_missing=False)
        if hasattr(self.recipe.training, "reference_model") and t > 0:
            values["reference_model"] = self.pi0
        path = it.root / "train.yaml"
        header = f"# posttrain iterate: the training recipe of iteration {t} (derived; rewritten on each run)\n"
        atomic_write_text(path, header + yaml.safe_dump(as_json(values), sort_keys=False))
        return path

    # -- the loop --

    def run_iteration(self, t: int) -> dict:
        it, label = self.pipe.sub(f"iter{t}"), f"iter{t}"
        pi_t, seed = self.policy(t), self.recipe.training.seed + t
        it.stage("sample", lambda d: phases.sample(d, self.generator(pi_t), self.prompt_rows(t), self.loop, seed,
                                                   f"{label}/sample"))
        samples = it.path("sample") / phases.SAMPLES
        it.stage("judge", lambda d: phases.judge_samples(d, samples, *self.judge(self.loop.judge), self.loop, seed,
                                                         f"{label}/judge"))
        it.stage("pairs", lambda d: _then_kill(phases.make_pairs(d, samples, it.path("judge") / phases.RANKING),
                                               f"{label}/pairs"))
        recipe_file = self.train_recipe(t)
        it.stage("precompute", lambda d: phases.precompute(d, recipe_file, f"{label}/precompute"))
        it.stage("train", lambda d: phases.train(d, recipe_file, self.loop.accelerate_config, f"{label}/train"))
        if self.recipe.model.use_peft:
            it.stage("merge", lambda d: phases.merge(d, it.path("train")))
        return it.stage("evaluate", lambda d: phases.evaluate(
            d, self.generator(self.policy(t + 1)), self.eval_rows(), self.pipe.path("pi0"),
            *self.judge(self.loop.eval_judge or self.loop.judge), self.run, self.loop, f"{label}/evaluate"))

    def run_all(self) -> dict:
        self.check_settings()
        self.pipe.stage("pi0", lambda d: phases.describe_model(d, self.generator(self.pi0), self.eval_rows(),
                                                               self.run, self.loop))
        for t in range(self.loop.iterations):
            self.run_iteration(t)
        from posttrain.iterate_report import write_loop_report

        return write_loop_report(self)

    def check_settings(self) -> None:
        """The output folder's first run records its settings; a rerun with other ones (except `FREE_KEYS`) would
        mix two experiments, and is refused."""
        settings = as_json({**self.recipe.given, **vars(self.loop)})
        settings = {k: v for k, v in settings.items() if k not in FREE_KEYS}
        recorded = self.pipe.stage("settings", lambda d: settings)
        changed = sorted(k for k in {*settings, *recorded} if settings.get(k) != recorded.get(k))
        if changed:
            raise UsageError(f"{self.root} holds a posttrain iterate run with other settings ({', '.join(changed)}); "
                             f"pass another output_dir or put the settings back (only {', '.join(FREE_KEYS)} may "
                             f"change on a rerun)")


def _then_kill(result, label: str):
    phases.kill_point(label)
    return result


def load_rows(source: str, setting: str, split: str, limit: int, seed: int) -> list[dict]:
    """[{prompt (chat messages), instruction (its last user text), answer?}] of a prompt dataset; a one-line error
    when it has fewer than `limit` rows."""
    from posttrain.data.loading import load_prompt_dataset

    dataset, column = load_prompt_dataset(source, setting, split, limit, seed)
    if len(dataset) < limit:
        fix = "lower eval_num_prompts" if setting.startswith("eval") else \
            "lower prompts_per_iteration or iterations, or set new_prompts_each_iteration false"
        raise UsageError(f"{setting} {source!r} ({split}) has {len(dataset)} rows, fewer than the {limit} the loop "
                         f"needs; {fix}")
    rows = []
    for record in dataset:
        prompt = record[column]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        row = {"prompt": prompt, "instruction": prompt[-1]["content"]}
        if record.get("answer") is not None:
            row["answer"] = record["answer"]
        rows.append(row)
    return rows


def make_judge(spec: str, pool, loop):
    """The pairwise judge named by `spec` (`posttrain.judges.judge_from_spec`)."""
    from posttrain.judges import judge_from_spec

    return judge_from_spec(spec, pool, labels=loop.judge_labels, seed=loop.judge_seed)


def check_loop(recipe: Recipe) -> None:
    """Every loop mistake found from the recipe alone, before any model loads: one UsageError line each."""
    loop = recipe.loop
    if recipe.method.dataset_kind != "preference":
        raise UsageError(f"posttrain iterate trains on ranked pairs; method {recipe.method.name!r} is not a "
                         f"preference method (use method: inpo, or dpo for iterative DPO)")
    for key, least in (("iterations", 1), ("samples_per_prompt", 2), ("prompts_per_iteration", 1),
                       ("sample_batch_size", 1), ("sample_max_new_tokens", 1), ("eval_num_prompts", 1),
                       ("tensor_parallel_size", 1)):
        if getattr(loop, key) < least:
            why = " (a pair is the best and the worst of K samples)" if key == "samples_per_prompt" else ""
            raise UsageError(f"{key} must be at least {least}{why}; got {getattr(loop, key)}")
    if not loop.sample_temperature > 0 or not 0 < loop.sample_top_p <= 1 or loop.sample_top_k < 0:
        raise UsageError(f"sampling needs sample_temperature > 0, 0 < sample_top_p <= 1 and sample_top_k >= 0; got "
                         f"{loop.sample_temperature}, {loop.sample_top_p}, {loop.sample_top_k}")
    _check_reference(recipe)
    _check_choice("ranking", loop.ranking, SCHEMES)
    for key in ("generation_backend", "judge_backend"):
        if getattr(loop, key) is not None:
            _check_choice(key, getattr(loop, key), BACKENDS)
    if not loop.prompt_dataset:
        raise UsageError("posttrain iterate needs prompt_dataset, the prompts to sample from (e.g. pg:sort8/sft)")
    if not loop.judge:
        raise UsageError("posttrain iterate needs judge, the pairwise judge that ranks the samples (e.g. rule:sort8 "
                         "or llm:<model>)")
    _check_paths(recipe)
    for spec in dict.fromkeys([loop.judge, loop.eval_judge or loop.judge]):
        check_judge_spec(spec, loop)
    _check_prompts(Loop(recipe))


def _check_prompts(loop: Loop) -> None:
    """Every iteration's prompts and the eval prompts exist; a rule judge has gold answers to score against; an LLM
    judge's prompt, with two outputs of sample_max_new_tokens each, fits its model's context."""
    from posttrain.generation import ModelPool
    from posttrain.judges import LLMJudge

    rows = loop.prompt_rows_through(loop.loop.iterations - 1)
    for spec, prompts in ((loop.loop.judge, rows), (loop.loop.eval_judge or loop.loop.judge, loop.eval_rows())):
        if spec.startswith("rule") and any("answer" not in row for row in prompts):
            raise UsageError(f"judge {spec!r} scores against gold answers, but the prompts have no 'answer' column; "
                             f"use prompts with answers (e.g. pg:<task>/sft) or an llm: or reward: judge")
        if spec.startswith("llm"):
            judge = make_judge(spec, ModelPool("transformers"), loop.loop)
            if isinstance(judge, LLMJudge):
                judge.check_fits([judge.prompt(row["instruction"], "", "") for row in prompts],
                                 2 * loop.loop.sample_max_new_tokens, "lower sample_max_new_tokens, ")


def _check_reference(recipe: Recipe) -> None:
    """INPO's pi_ref is the loop's pi_0, set by `Loop.train_recipe` from iteration 1 on: a recipe's own other
    reference_model would be ignored, and without precompute iteration 1's recipe would fail after iteration 0."""
    training, pi0 = recipe.training, recipe.model.model_name_or_path
    if not hasattr(training, "reference_model"):
        return
    if training.reference_model not in (None, pi0):
        raise UsageError(f"posttrain iterate sets reference_model itself (pi_ref = pi_0 = model_name_or_path "
                         f"{pi0!r}); remove reference_model {training.reference_model!r} from the recipe")
    if recipe.loop.iterations > 1 and not training.precompute_ref_log_probs:
        raise UsageError("from iteration 1 on INPO scores pi_0 as its reference_model, which needs the precomputed "
                         "cache; set precompute_ref_log_probs true (or iterations 1)")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    from posttrain.registry import closest

    if value not in choices:
        raise UsageError(f"{key} {value!r} is unknown{closest(value, choices)}; choose one of {', '.join(choices)}")


def _check_paths(recipe: Recipe) -> None:
    from posttrain.data.loading import check_dataset_path
    from posttrain.models import check_model_path

    loop = recipe.loop
    check_model_path(recipe.model.model_name_or_path, "model_name_or_path")
    check_dataset_path(loop.prompt_dataset, "prompt_dataset")
    if loop.eval_prompt_dataset:
        check_dataset_path(loop.eval_prompt_dataset, "eval_prompt_dataset")
    if loop.accelerate_config and not Path(loop.accelerate_config).is_file():
        raise UsageError(f"accelerate_config {loop.accelerate_config!r} does not exist; pass an accelerate config "
                         f"file (e.g. recipes/accelerate/cpu_deepspeed_zero3.yaml) or leave it unset (one process)")


def check_judge_spec(spec: str, loop) -> None:
    """A judge spec that cannot work fails here (its kind, labels, a local model path), without loading a model."""
    from posttrain.generation import ModelPool
    from posttrain.models import check_model_path

    kind, _, target = spec.partition(":")
    if kind in ("reward", "llm") and target:
        check_model_path(target, f"judge {spec!r}:")
    if kind != "reward":  # a reward model would load here; the others load their models lazily
        make_judge(spec, ModelPool("transformers"), loop)


def run_loop(recipe: Recipe) -> dict:
    """Check the loop's settings, then run (or resume) every iteration and write the report; returns report.json."""
    check_loop(recipe)
    return Loop(recipe).run_all()
