"""`posttrain eval unlearning` (= `python eval/unlearning.py`): SemEval-2025 Task 4 (LUME) scores, computed as the
task's evaluation script did (docs/methods.md §5.3).

  posttrain eval unlearning --model runs/unlearn --data tests/fixtures/lume \
      --mia_nonmembers tests/fixtures/lume/mia_nonmembers.jsonl
  posttrain eval unlearning --generations outputs.jsonl --data tests/fixtures/lume --skip_mia --mmlu_score 0.243

The forget and retain sets are LUME rows {id, input, output, task} (ids ending sc<digit> or qa<digit>), or a
prompt-completion set such as pg:facts/forget. The model's greedy outputs on the raw prompts (no chat template unless
--apply_chat_template) are scored per task and split; --generations scores existing outputs of any system instead,
a JSON or JSON-lines file of {id, output} rows. MIA members default to the forget set's documents; non-members are
a file you pass. MMLU runs through `evaluate_mmlu` unless --skip_mmlu or --mmlu_score; without MIA or MMLU the final
score is reported as missing. Writes results.json, results.md and generations.jsonl to --output_dir; a rerun reuses
the generations (and MMLU scores) already made.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posttrain.console import quiet_libraries
from posttrain.errors import HelpFormatter, OneLineArgumentParser, exit_on_usage_error
from posttrain.evaluation.unlearning_data import data_sources
from posttrain.evaluation.unlearning_run import UnlearningEval, evaluate_unlearning
from posttrain.io import check_output_folder


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="posttrain eval unlearning", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", help="model folder or hub id: generates the outputs, scores MIA and MMLU")
    p.add_argument("--data", help="folder holding forget.jsonl and retain.jsonl")
    p.add_argument("--forget", help="forget set: JSON/JSONL/Parquet file or pg:facts/forget (default: --data's)")
    p.add_argument("--retain", help="retain set: JSON/JSONL/Parquet file or pg:facts/retain (default: --data's)")
    p.add_argument("--generations", help="score these outputs instead of generating: JSON/JSONL rows {id, output}")
    p.add_argument("--backend", default="auto", choices=["auto", "vllm", "transformers"],
                   help="generation and scoring backend (auto: vLLM when installed)")
    p.add_argument("--batch_size", type=int, default=64, help="prompts per generation batch")
    p.add_argument("--max_new_tokens", type=int, default=256, help="greedy new tokens per output (the task's 256)")
    p.add_argument("--max_prompt_tokens", type=int, default=None,
                   help="keep only the last N tokens of longer prompts (default: prompts as they are)")
    p.add_argument("--apply_chat_template", action="store_true",
                   help="send each input as a user chat message (the task fed raw prompts)")
    p.add_argument("--no_clean_up_spaces", dest="clean_up_spaces", action="store_false",
                   help="keep spaces before punctuation in the outputs (the task's decoding removed them)")
    p.add_argument("--mia_members", help="member documents {document} or {input, output} (default: the forget "
                                         "set's sc rows, input and output joined)")
    p.add_argument("--mia_nonmembers", help="non-member documents {document} or {input, output}: text the model "
                                            "never trained on")
    p.add_argument("--skip_mia", action="store_true", help="no membership attack (the final score is then missing)")
    p.add_argument("--mia_batch_size", type=int, default=8, help="documents per forward pass (transformers backend)")
    p.add_argument("--mmlu_data", default="cais/mmlu", help="MMLU CSV folder (dev/, test/) or hub id")
    p.add_argument("--mmlu_subjects", nargs="+", default=None, help="MMLU subjects (default: all)")
    p.add_argument("--mmlu_limit", type=int, default=None, help="first N test questions per MMLU subject")
    p.add_argument("--mmlu_num_fewshot", type=int, default=0, help="MMLU solved dev questions per prompt (0-5)")
    p.add_argument("--mmlu_score", type=float, default=None, help="a known MMLU accuracy to use instead of running it")
    p.add_argument("--skip_mmlu", action="store_true", help="no MMLU (the final score is then missing)")
    p.add_argument("--output_dir", default=None, help="default runs/eval-unlearning/<model or generations name>")
    p.add_argument("--verbose", action="store_true", help="show every library log line and progress bar")
    return p


def parse_args(argv: list[str]) -> tuple[UnlearningEval, bool]:
    """(the evaluation's settings, --verbose), checked before anything is read."""
    args = vars(build_parser().parse_args(argv))
    verbose = args.pop("verbose")
    args["forget"], args["retain"] = data_sources(args.pop("data"), args["forget"], args["retain"])
    if args["mmlu_subjects"]:
        args["mmlu_subjects"] = [s for item in args["mmlu_subjects"] for s in item.split(",") if s]
    if args["output_dir"] is None:
        source = args["model"] or args["generations"] or "outputs"
        args["output_dir"] = f"runs/eval-unlearning/{Path(source.rstrip('/')).stem}"
    check_output_folder(args["output_dir"], "--output_dir")
    return UnlearningEval(**args), verbose


def run(argv: list[str] | None = None) -> dict:
    cfg, verbose = parse_args(argv or [])
    with quiet_libraries(verbose):
        results = evaluate_unlearning(cfg)
    with open(Path(cfg.output_dir) / "results.md", encoding="utf-8") as table:
        print(table.read(), end="")
    print(f"results: {cfg.output_dir}/results.json")
    return results


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    import sys

    run(list(sys.argv[1:] if argv is None else argv))
