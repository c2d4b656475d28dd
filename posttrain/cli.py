"""`posttrain train|iterate|trace|eval|export|generate|demo|methods|recipe|tiny-model|data|eval-task`: thin wrappers
over the library."""

from __future__ import annotations

import argparse
import sys

from posttrain.errors import OneLineArgumentParser, UsageError, check_counts, exit_on_usage_error
from posttrain.registry import closest, import_string


def _methods(_args) -> None:
    from posttrain.registry import METHODS

    for method in METHODS.values():
        print(f"{method.name:8s} {method.dataset_kind:11s} {method.summary}")


def _recipe(args) -> None:
    from posttrain.recipe_help import method_keys, starter_recipe, write_new_file
    from posttrain.registry import METHODS, get_method

    if args.method is None:
        raise UsageError(f"posttrain recipe needs a method: one of {', '.join(METHODS)} (e.g. posttrain recipe dpo)")
    method = get_method(args.method)
    if args.output and not args.template:
        raise UsageError("--output writes the starter recipe; add --template")
    if not args.template:
        print(method_keys(method))
    elif args.output:
        write_new_file(args.output, starter_recipe(method))
        print(f"starter recipe written to {args.output}; fill in its required keys, then: "
              f"posttrain train --config {args.output}")
    else:
        print(starter_recipe(method), end="")


def _tiny_model(args) -> None:
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    path = make_tiny_model(args.output, tokenizer_corpus(), family=args.family, seed=args.seed)
    print(f"tiny {args.family} model written to {path}")


def _data(args) -> None:
    from posttrain.data import load_any_dataset
    from posttrain.io import check_output_file, write_jsonl

    check_counts(("--n", args.n, 1))
    check_output_file(args.output, "--output")
    dataset = load_any_dataset(args.dataset, args.split, num_examples=args.n, seed=args.seed)
    write_jsonl(args.output, dataset.to_list())
    print(f"{len(dataset)} rows written to {args.output}")


def _eval_task(args) -> None:
    import json

    from posttrain.console import quiet_libraries
    from posttrain.data.tasks import get_eval_task
    from posttrain.evaluation.proving_ground import evaluate_task
    from posttrain.generation import TransformersGenerator
    from posttrain.models import load_causal_lm, load_tokenizer

    get_eval_task(args.task)  # before any model loads
    check_counts(("--n", args.n, 1))
    with quiet_libraries():
        tokenizer = load_tokenizer(args.model)
        baseline = TransformersGenerator(load_causal_lm(args.baseline), tokenizer) if args.baseline else None
        result = evaluate_task(TransformersGenerator(load_causal_lm(args.model), tokenizer), args.task, args.n,
                               args.seed, baseline)
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))


# `posttrain demo <which>`: a method's own comparison -> (its function, its default output folder).
DEMO_COMPARISONS = {"rpo": ("posttrain.demo_rpo:run_rpo_comparison", "runs/demo-rpo"),
                    "srpo": ("posttrain.demo_srpo:run_srpo_comparison", "runs/demo-srpo"),
                    "dypo": ("posttrain.demo_dypo:run_dypo_comparison", "runs/demo-dypo"),
                    "inpo": ("posttrain.demo_inpo:run_inpo_comparison", "runs/demo-inpo"),
                    "unlearn": ("posttrain.demo_unlearn:run_unlearn_comparison", "runs/demo-unlearn")}


def _demo(args) -> None:
    from posttrain.io import check_output_folder

    for seed in args.seeds:
        check_counts(("--seeds", seed, 0))
    check_output_folder(args.output, "--output")
    if args.which in DEMO_COMPARISONS:
        from posttrain.registry import import_string

        function, default_output = DEMO_COMPARISONS[args.which]
        output = args.output if args.output != "runs/demo" else default_output
        import_string(function)(output, tuple(args.seeds))
        with open(f"{output}/report.md") as report:
            print(report.read())
        return
    from posttrain.demo import headline_table, run_demo, unlearning_lines

    results = run_demo(args.output, tuple(args.seeds), unlearning=True)
    print(f"\nProving-ground demo ({results['task']}), report: {args.output}/report.md\n")
    print("\n".join([*headline_table(results), "", *unlearning_lines(results)]))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="posttrain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="train a recipe: posttrain train --config <recipe.yaml> [--key value ...]",
                        add_help=False)
    commands.add_parser("eval", help=f"evaluate: posttrain eval {{{','.join(EVALUATIONS)}}} --help", add_help=False)
    commands.add_parser("export", add_help=False, help="plain HF checkpoint from a LoRA run (--merge-lora) or a "
                        "DeepSpeed ZeRO checkpoint: posttrain export <run-or-checkpoint> --output <dir>")
    commands.add_parser("generate", add_help=False, help="resumable AlpacaEval-format outputs of a model; "
                        "--revisions N: SRPO self-revision rounds: posttrain generate --help")
    commands.add_parser("trace", add_help=False, help="causal tracing (ROME-style): where a model's facts live, "
                        "effect heatmaps and suggested layers for unlearning: posttrain trace --help")
    commands.add_parser("iterate", add_help=False, help="INPO's loop (or iterative DPO), resumable in every phase: "
                        "posttrain iterate --config <recipe.yaml> [--key value ...]")
    commands.add_parser("methods", help="list registered methods").set_defaults(func=_methods)
    recipe = commands.add_parser("recipe", help="every recipe key of a method with its default and help; "
                                                "--template: a commented starter recipe")
    recipe.add_argument("method", nargs="?", help="a registered method (posttrain methods)")
    recipe.add_argument("--template", action="store_true", help="print (or write) a commented starter recipe")
    recipe.add_argument("--output", help="with --template: write it to this new file (never overwritten)")
    recipe.set_defaults(func=_recipe)
    tiny = commands.add_parser("tiny-model", help="build a tiny offline model and tokenizer")
    tiny.add_argument("--output", required=True)
    tiny.add_argument("--family", default="llama", choices=["llama", "qwen2"])
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_tiny_model)
    data = commands.add_parser("data", help="write a dataset (e.g. pg:sort8/preference) to JSON lines")
    data.add_argument("--dataset", required=True)
    data.add_argument("--split", default="train")
    data.add_argument("--n", type=int, default=None)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--output", required=True)
    data.set_defaults(func=_data)
    evaluate = commands.add_parser("eval-task", help="proving-ground accuracy (and win rate vs a baseline)")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--task", default="sort8")
    evaluate.add_argument("--baseline", default=None)
    evaluate.add_argument("--n", type=int, default=500)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.set_defaults(func=_eval_task)
    demo = commands.add_parser("demo", help="proving-ground demo: tiny model -> SFT -> every preference method and "
                                            "an SFT-on-chosen control -> one table; `demo rpo`: DPO vs RPO "
                                            "(3 normalisations) vs SFT-on-chosen; `demo srpo`: win rate by "
                                            "revision, in and out of distribution; `demo dypo`: DYPO vs GRPO vs "
                                            "SFT on teacher traces vs one-teacher DYPO; `demo inpo`: INPO vs "
                                            "iterative DPO over 3 loop iterations, with a length-biased judge; "
                                            "`demo unlearn`: trace the facts model, then unlearn with traced "
                                            "layers vs random layers vs gradient difference vs NPO")
    demo.add_argument("which", nargs="?", default="all", choices=["all", *DEMO_COMPARISONS])
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    demo.set_defaults(func=_demo)
    return parser


# `posttrain eval <name> ...` forwards the rest of the command line to that evaluation's own parser.
FORWARDED = {"train": "posttrain.train:main", "export": "posttrain.export:main",
             "generate": "posttrain.generation.generate_cli:main", "trace": "posttrain.tracing_cli:main",
             "iterate": "posttrain.iterate_cli:main"}
EVALUATIONS = {
    "winrate": "posttrain.evaluation.winrate_cli:main",
    "mmlu": "posttrain.evaluation.mmlu_cli:main",
    "unlearning": "posttrain.evaluation.unlearning_cli:main",
}


def _forward_eval(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: posttrain eval {{{','.join(EVALUATIONS)}}} [options]  (posttrain eval <name> --help)")
        return
    if argv[0] not in EVALUATIONS:
        raise UsageError(f"unknown evaluation {argv[0]!r}{closest(argv[0], EVALUATIONS)} "
                         f"(available: {', '.join(EVALUATIONS)})")
    import_string(EVALUATIONS[argv[0]])(argv[1:])


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FORWARDED:  # everything after the command belongs to its own parser
        import_string(FORWARDED[argv[0]])(argv[1:])
        return
    if argv and argv[0] == "eval":
        _forward_eval(argv[1:])
        return
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
