"""`posttrain eval winrate`: AlpacaEval-2-compatible win rate of a model against a reference (docs/methods.md §6.1).

Two modes:
  --annotations FILE       score existing AlpacaEval annotations (reproduces the published leaderboard numbers);
  generate and judge       outputs from --model or --model_outputs, and --reference or --reference_outputs, on
                           --instructions, judged by --judge rule:<task> | reward:<path> | llm:<path> |
                           llm-openai:<base_url>#<model>;
  --revisions_dir DIR      the same for every revision_<k>.json that `posttrain generate --revisions N` wrote:
                           one folder per revision, and winrate_by_revision.{json,md,png} (also into the model's
                           run report when it is a posttrain run).
Writes, atomically, AlpacaEval formats into --output_dir: model_outputs.json, reference_outputs.json,
annotations.json and leaderboard.json. Generations and annotations are cached as JSON lines there, so a rerun
after a kill resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from posttrain.console import quiet_libraries
from posttrain.errors import HelpFormatter, OneLineArgumentParser, UsageError, check_counts, exit_on_usage_error
from posttrain.evaluation.winrate import avg_length, winrate_metrics
from posttrain.generation.generate_cli import add_generation_arguments, check_generation_args
from posttrain.io import atomic_write_json, read_json_list

ANNOTATION_KEYS = ("instruction", "output_1", "output_2", "preference")
COMPACT_KEYS = ("preference", "output_1_length", "output_2_length")
OUTPUT_KEYS = ("instruction", "output", "generator")
JUDGE_BATCH = 32  # annotations appended to the cache after every batch


def _clean(value):
    """NaN (a missing standard error) as JSON null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def leaderboard(annotations: list[dict], model_outputs: list[str] | None = None) -> dict:
    """Metrics for one model's annotations; avg_length over `model_outputs` (default: the annotated outputs)."""
    preferences = [a["preference"] for a in annotations]
    metrics = winrate_metrics(preferences, [a["output_2"] or "" for a in annotations],
                              [a["output_1"] or "" for a in annotations])
    if model_outputs is not None:
        metrics["avg_length"] = avg_length(model_outputs)
    return {k: _clean(v) for k, v in metrics.items()}


def read_compact_annotations(path: str) -> dict | None:
    """AlpacaEval annotations in compact column form, {"preference": [...], "output_1_length": [...],
    "output_2_length": [...], "generator_2": name} (as in tests/fixtures/alpaca_eval), or None for another form."""
    file = Path(path).expanduser()
    text = file.read_text(encoding="utf-8") if file.is_file() else ""
    if not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"annotations file {path!r} is not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("preference"), list):
        return None  # not the compact form: read as AlpacaEval's list of annotation objects (with its errors)
    columns = [data.get(key) for key in COMPACT_KEYS]
    if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns}) != 1:
        raise UsageError(f"annotations file {path!r} is an object: it must hold lists {', '.join(COMPACT_KEYS)} of "
                         "one length (or use AlpacaEval's list of annotation objects)")
    return data


def write_results(output_dir: Path, name: str, metrics: dict) -> None:
    """leaderboard.json is {model name: metrics}, like one row of the AlpacaEval leaderboard."""
    atomic_write_json(output_dir / "leaderboard.json", {name: metrics})
    print(json.dumps(metrics, indent=2))


def score_annotations(args) -> dict:
    compact = read_compact_annotations(args.annotations)
    if compact is not None:
        return _score(args, compact["preference"], compact.get("generator_2"),
                      model_lengths=compact["output_2_length"], reference_lengths=compact["output_1_length"])
    rows = read_json_list(args.annotations, "annotations", ANNOTATION_KEYS)
    return _score(args, [r["preference"] for r in rows], rows[0].get("generator_2"),
                  model_outputs=[r["output_2"] or "" for r in rows],
                  reference_outputs=[r["output_1"] or "" for r in rows])


def _score(args, preferences: list, generator: str | None, **lengths) -> dict:
    """Leaderboard metrics of scored annotations, written to --output_dir."""
    for index, preference in enumerate(preferences):
        if preference is not None and not isinstance(preference, int | float):
            raise UsageError(f"annotations file {args.annotations!r}: entry {index} has preference "
                             f"{preference!r}; expected a number in [1, 2] or null")
    name = args.name or str(generator or Path(args.annotations).stem)
    try:
        metrics = {k: _clean(v) for k, v in winrate_metrics(preferences, **lengths).items()}
    except ValueError as err:
        raise UsageError(f"annotations file {args.annotations!r}: {err}") from None
    write_results(Path(args.output_dir), name, metrics)
    return metrics


# --- generate and judge ---------------------------------------------------------------------------------------


def instruction_rows(args) -> list[dict]:
    """[{instruction, prompt, answer?}] from --instructions (a dataset) or, without it, the --model_outputs file."""
    if args.instructions is None:
        if args.model_outputs is None:
            raise UsageError("say which instructions to use: --instructions DATASET (or pass --model_outputs FILE)")
        rows = read_json_list(args.model_outputs, "model outputs", OUTPUT_KEYS)
        return [{"instruction": r["instruction"], "prompt": _as_chat(r["instruction"])}
                for r in rows[:args.max_instructions]]
    from posttrain.data.loading import load_prompt_dataset

    dataset, key = load_prompt_dataset(args.instructions, "--instructions", args.split, args.max_instructions)
    rows = []
    for record in dataset:
        prompt = _as_chat(record[key])
        row = {"instruction": prompt[-1]["content"], "prompt": prompt}
        if record.get("answer") is not None:
            row["answer"] = record["answer"]
        rows.append(row)
    return rows


def _as_chat(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


@dataclass
class Outputs:
    """One side's outputs: `texts` read from a file, or generated by `source` with up to `max_new_tokens`."""

    what: str
    name: str
    texts: list[str] | None = None
    source: str | None = None
    max_new_tokens: int = 0

    def text(self, index: int) -> str:
        """The output at `index` if it is known already ('' until generated)."""
        return self.texts[index] if self.texts is not None else ""


def plan_outputs(rows: list[dict], source: str | None, path: str | None, what: str, args) -> Outputs:
    """Where each instruction row's output comes from: an outputs file (matched by instruction) or `source`."""
    if path is not None:
        records = read_json_list(path, f"{what} outputs", OUTPUT_KEYS)
        by_instruction = {r["instruction"]: r for r in records}
        missing = [r["instruction"] for r in rows if r["instruction"] not in by_instruction]
        if missing:
            raise UsageError(f"{what} outputs file {path!r} has no output for {len(missing)} instruction(s), "
                             f"e.g. {missing[0][:60]!r}")
        return Outputs(what, str(records[0]["generator"]),
                       texts=[str(by_instruction[r["instruction"]]["output"]) for r in rows])
    if source is None:
        raise UsageError(f"say where the {what} outputs come from: --{what} PATH_OR_ID or --{what}_outputs FILE")
    return Outputs(what, Path(source).name or source, source=source,
                   max_new_tokens=_fitted_max_new_tokens(source, rows, args.max_new_tokens))


def _fitted_max_new_tokens(source: str, rows: list[dict], requested: int) -> int:
    """--max_new_tokens, capped at what `source`'s context leaves after the longest prompt."""
    from posttrain.generation.context import context_window, fit_max_new_tokens, longest_prompt_tokens
    from posttrain.models import load_tokenizer

    context = context_window(source)
    if context is None:
        return requested
    longest = longest_prompt_tokens(load_tokenizer(source), [r["prompt"] for r in rows])
    return fit_max_new_tokens(requested, context, longest, source)


def produce(plan: Outputs, rows: list[dict], args, pool) -> list[str]:
    """The planned outputs: read, or generated through the resumable cache in --output_dir."""
    if plan.texts is not None:
        return plan.texts
    from posttrain.generation import SamplingParams, generate_cached

    params = SamplingParams(n=1, temperature=args.temperature, top_p=args.top_p, max_new_tokens=plan.max_new_tokens,
                            seed=args.seed)
    cache = Path(args.output_dir) / f"generations.{plan.what}.jsonl"
    completions = generate_cached(pool.lazy(plan.source), [r["prompt"] for r in rows], params, cache,
                                  progress=f"generate {plan.what}")
    return [c[0].text for c in completions]


def check_gold_answers(judge, rows: list[dict], spec: str) -> None:
    """A rule judge scores against gold answers: every instruction needs one, known before anything is generated."""
    from posttrain.judges import RuleJudge

    missing = sum(r.get("answer") is None for r in rows)
    if isinstance(judge, RuleJudge) and missing:
        raise UsageError(f"judge {spec!r} needs gold answers, but {missing} of {len(rows)} instructions have none; "
                         "use instructions with an 'answer' column (e.g. pg:<task>/sft) or an llm:/reward: judge")


def check_judge_fits(judge, rows: list[dict], model: Outputs, reference: Outputs) -> None:
    """An LLM judge's longest prompt, each output still to generate counted at its max_new_tokens, must fit the
    judge model's context. Checked before anything is generated or judged."""
    from posttrain.judges import LLMJudge

    if not isinstance(judge, LLMJudge):
        return
    prompts = [judge.prompt(r["instruction"], reference.text(k), model.text(k)) for k, r in enumerate(rows)]
    to_generate = model.max_new_tokens + reference.max_new_tokens
    judge.check_fits(prompts, to_generate, "lower --max_new_tokens, " if to_generate else "")


def judge_from_spec(spec: str, args, pool):
    """The judge of `--judge` (`posttrain.judges.judge_from_spec`) with --judge_labels and --judge_seed."""
    from posttrain import judges

    return judges.judge_from_spec(spec, pool, labels=args.judge_labels, seed=args.judge_seed,
                                  labels_setting="--judge_labels")


def pools_and_judge(args):
    """(generation pool, judge pool, judge); the judge is built first, so a bad spec fails before any generation."""
    from posttrain.generation import ModelPool

    pool = ModelPool(args.backend, args.batch_size)
    judge_pool = pool if args.judge_backend in (None, args.backend) else ModelPool(args.judge_backend, args.batch_size)
    return pool, judge_pool, judge_from_spec(args.judge, args, judge_pool)


def generate_and_judge(args) -> dict:
    pool, judge_pool, judge = pools_and_judge(args)
    rows = instruction_rows(args)
    check_gold_answers(judge, rows, args.judge)
    model_plan = plan_outputs(rows, args.model, args.model_outputs, "model", args)
    reference_plan = plan_outputs(rows, args.reference, args.reference_outputs, "reference", args)
    check_judge_fits(judge, rows, model_plan, reference_plan)
    outputs, references = produce(model_plan, rows, args, pool), produce(reference_plan, rows, args, pool)
    names = (args.name or model_plan.name, args.reference_name or reference_plan.name)
    try:
        return judge_outputs(judge, judge_pool.backend, rows, outputs, references, names, Path(args.output_dir), args)
    finally:
        pool.close()
        judge_pool.close()


def judge_outputs(judge, judge_backend: str, rows: list[dict], outputs: list[str], references: list[str],
                  names: tuple[str, str], output_dir: Path, args) -> dict:
    """Write both sides' outputs, judge them through the annotation cache in `output_dir`, write the annotations
    and the leaderboard; returns the metrics."""
    from posttrain.judges import annotate_cached

    model_name, reference_name = names
    for name, texts, file in ((model_name, outputs, "model_outputs.json"),
                              (reference_name, references, "reference_outputs.json")):
        atomic_write_json(output_dir / file, [{"instruction": r["instruction"], "output": t, "generator": name}
                                              for r, t in zip(rows, texts)])
    judge_config = {"judge": args.judge, "seed": args.judge_seed, "labels": args.judge_labels,
                    "backend": judge_backend}
    judged = annotate_cached(judge, [r["instruction"] for r in rows], references, outputs,
                             output_dir / "annotations.cache.jsonl", judge_config,
                             answers=[r.get("answer") for r in rows], batch_size=JUDGE_BATCH, progress="judge")
    annotations = [{"instruction": r["instruction"], "output_1": ref, "output_2": out, "generator_1": reference_name,
                    "generator_2": model_name, "annotator": judge.name, "preference": j["preference"],
                    "swapped": j["swapped"], "judge_seed": args.judge_seed, "raw": j["raw"]}
                   for r, ref, out, j in zip(rows, references, outputs, judged)]
    atomic_write_json(output_dir / "annotations.json", annotations)
    if all(a["preference"] is None for a in annotations):
        raise UsageError(f"the judge failed on all {len(annotations)} examples (see "
                         f"{output_dir / 'annotations.json'}); {_failed_judge_fix(judge, args)}")
    metrics = leaderboard(annotations, outputs)
    write_results(output_dir, model_name, metrics)
    return metrics


def _failed_judge_fix(judge, args) -> str:
    from posttrain.judges import LLMJudge

    if isinstance(judge, LLMJudge):
        return (f"neither of --judge_labels {args.judge_labels!r} was among the judge's likely answer tokens (see "
                "'top_logprobs' there): pass labels it answers with, or use a stronger judge model")
    return "use a stronger judge model or a different judge"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="posttrain eval winrate", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--annotations", help="score an AlpacaEval annotations JSON file and stop")
    parser.add_argument("--model", help="model path or hub id whose outputs are judged")
    parser.add_argument("--model_outputs", help="AlpacaEval outputs JSON (instead of --model)")
    parser.add_argument("--revisions_dir", help="judge every revision_<k>.json of `posttrain generate --revisions` "
                                                "(instead of --model): a win-rate-by-revision table and plot")
    parser.add_argument("--reference", help="reference model path or hub id")
    parser.add_argument("--reference_outputs", help="AlpacaEval outputs JSON (instead of --reference)")
    parser.add_argument("--instructions", help="dataset: pg:<task>/<kind>, a local JSON/JSONL file or a hub id")
    parser.add_argument("--split", default=None, help="dataset split (default: test for pg:, else train)")
    parser.add_argument("--max_instructions", type=int, default=None,
                        help="use the first N instructions (default: all)")
    parser.add_argument("--judge", default=None, help="rule:<task> | reward:<path> | llm:<path> | "
                                                     "llm-openai:<base_url>#<model>")
    parser.add_argument("--judge_seed", type=int, default=0, help="seed of the per-example output order")
    parser.add_argument("--judge_labels", default="a,b", help="the LLM judge's two answer labels")
    parser.add_argument("--judge_backend", default=None, choices=["auto", "vllm", "transformers"],
                        help="backend of an llm: judge (default: --backend)")
    add_generation_arguments(parser)
    parser.add_argument("--name", default=None, help="the model's name in the outputs (default: from the source)")
    parser.add_argument("--reference_name", default=None, help="the reference's name (default: from the source)")
    parser.add_argument("--output_dir", required=True, help="folder for the outputs, annotations and caches")
    parser.add_argument("--verbose", action="store_true", help="show every library log line and progress bar")
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Parse `argv`, run the chosen mode and return the metrics (bad input raises UsageError)."""
    args = build_parser().parse_args(argv)
    check_generation_args(args)
    check_counts(("--max_instructions", args.max_instructions, 1))
    if args.annotations is not None:
        return score_annotations(args)
    if args.judge is None:
        raise UsageError("pass --judge (rule:<task>, reward:<path>, llm:<path>, llm-openai:<base_url>#<model>) "
                         "or --annotations FILE")
    with quiet_libraries(args.verbose):
        if args.revisions_dir is not None:
            from posttrain.evaluation.winrate_revisions import winrate_by_revision

            return winrate_by_revision(args)
        return generate_and_judge(args)


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    run(argv)
