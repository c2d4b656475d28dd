"""`posttrain eval mmlu` (= `python eval/mmlu.py`): MMLU accuracy as lm-evaluation-harness's `mmlu` task.

Writes `<output_dir>/results.json` (settings, per-subject, per-category and overall accuracy) and
`predictions.jsonl` (one line per question). Scored questions stream to `scored.jsonl`, so rerunning the same
command after an interruption scores only what is missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posttrain.console import quiet_libraries
from posttrain.errors import OneLineArgumentParser, exit_on_usage_error
from posttrain.evaluation.loglikelihood import BACKENDS
from posttrain.evaluation.mmlu import check_options, evaluate_mmlu
from posttrain.io import check_output_folder


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() in ("true", "1", "yes")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="posttrain eval mmlu", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--data", default="cais/mmlu", help="folder with dev/ and test/ CSVs, or a hub id (cais/mmlu)")
    p.add_argument("--subjects", nargs="+", default=None, help="subject names (space or comma separated); all if unset")
    p.add_argument("--limit", type=int, default=None, help="first N test questions per subject")
    p.add_argument("--num_fewshot", type=int, default=0, help="solved dev questions before each question (0-5)")
    p.add_argument("--apply_chat_template", action="store_true", help="format prompts with the tokenizer's template")
    p.add_argument("--fewshot_as_multiturn", type=_flag, default=True,
                   help="with --apply_chat_template: shots as separate user/assistant turns (default true)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="auto: vLLM when installed")
    p.add_argument("--batch_size", type=int, default=32, help="sequences per forward pass (transformers backend)")
    p.add_argument("--max_length", type=int, default=None,
                   help="context window in tokens; longer prompts lose tokens on the left (default: the model's)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--revision", default=None)
    p.add_argument("--trust_remote_code", action="store_true")
    p.add_argument("--gpu_memory_utilization", type=float, default=None, help="vLLM backend (default 0.9, CPU 0.2)")
    p.add_argument("--output_dir", default=None, help="default runs/mmlu/<model>_<k>shot")
    p.add_argument("--verbose", action="store_true", help="show every library log line and progress bar")
    return p


def parse_args(argv: list[str]):
    args = build_parser().parse_args(argv)
    args.subjects = [s for item in args.subjects for s in item.split(",") if s] if args.subjects else None
    check_options(args.num_fewshot, limit=args.limit, batch_size=args.batch_size, max_length=args.max_length)
    if args.output_dir is None:
        chat = "_chat" if args.apply_chat_template else ""
        args.output_dir = f"runs/mmlu/{Path(args.model.rstrip('/')).name}_{args.num_fewshot}shot{chat}"
    check_output_folder(args.output_dir, "--output_dir")
    return args


def run(args) -> dict:
    """`evaluate_mmlu` with the parsed arguments, libraries quiet unless --verbose; returns the results."""
    options = {key: value for key, value in vars(args).items() if key != "verbose"}
    with quiet_libraries(args.verbose):
        return evaluate_mmlu(**options, progress=True)


def print_summary(results: dict, output_dir: str) -> None:
    overall = results["overall"]
    print(f"MMLU {results['config']['num_fewshot']}-shot, {overall['n']} questions: acc {overall['acc']:.4f}")
    for name, row in results["categories"].items():
        print(f"  {name:16s} {row['acc']:.4f}  (n={row['n']})")
    if results["truncated_questions"]:
        print(f"  {results['truncated_questions']} prompts exceeded max_length "
              f"{results['config']['max_length']} and were truncated on the left")
    print(f"results: {output_dir}/results.json")


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    import sys

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    print_summary(run(args), args.output_dir)
