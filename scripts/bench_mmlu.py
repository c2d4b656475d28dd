"""Wall time of our MMLU evaluation against lm-evaluation-harness (HF backend) on the same model, data, subjects and
shots, side by side in one process; also checks that both predict the same letters.

    python scripts/bench_mmlu.py --num_fewshot 5 --subjects abstract_algebra global_facts [--vllm]

Each side is timed end to end after imports: model and data loading, prompt building, scoring. Without --model
a tiny offline model is built first. --data defaults to a full local MMLU copy at ../shared/data/mmlu when present
(optional), else tests/fixtures/mmlu (20 test questions per subject); `--data cais/mmlu` reads the hub. The
README's 371 questions are the three default subjects' full test sets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _default_data() -> str:
    shared = REPO.parent / "shared" / "data" / "mmlu"
    return str(shared if shared.is_dir() else REPO / "tests" / "fixtures" / "mmlu")


def _ours(model: str, data: str, subjects: list[str], args) -> tuple[list[dict], float]:
    from posttrain.evaluation import mmlu
    from posttrain.evaluation.loglikelihood import TransformersScorer
    from posttrain.models import load_causal_lm, load_tokenizer

    start = time.perf_counter()
    tokenizer = load_tokenizer(model)
    scorer = TransformersScorer(load_causal_lm(model, dtype="float32").to(args.device), tokenizer, args.batch_size)
    records = mmlu.score_subjects(scorer, mmlu.load_subjects(data, subjects, args.limit, args.num_fewshot),
                                 mmlu.PromptFormat(args.num_fewshot))
    return records, time.perf_counter() - start


def _ours_vllm(model: str, data: str, subjects: list[str], args) -> tuple[list[dict], float, float]:
    from posttrain.evaluation import mmlu
    from posttrain.evaluation.loglikelihood import VLLMScorer
    from posttrain.models import load_tokenizer

    start = time.perf_counter()
    scorer = VLLMScorer(model, load_tokenizer(model))
    started = time.perf_counter()
    records = mmlu.score_subjects(scorer, mmlu.load_subjects(data, subjects, args.limit, args.num_fewshot),
                                 mmlu.PromptFormat(args.num_fewshot))
    end = time.perf_counter()
    scorer.close()
    return records, started - start, end - started


def _agreement(records: list[dict], reference: dict) -> tuple[float, float]:
    same = sum(r["prediction"] == reference[(r["subject"], r["index"])]["prediction"] for r in records)
    gap = max(abs(a - b) for r in records
              for a, b in zip(r["loglikelihoods"], reference[(r["subject"], r["index"])]["loglikelihoods"]))
    return same / len(records), gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: build the tiny model)")
    parser.add_argument("--data", default=_default_data())
    parser.add_argument("--subjects", nargs="+", default=["abstract_algebra", "global_facts", "world_religions"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--num_fewshot", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vllm", action="store_true", help="also time our vLLM backend (engine start separately)")
    parser.add_argument("--output", default="runs/bench/mmlu.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import lm_eval.models.huggingface  # noqa: F401  (imports are not part of either timing)
    import transformers  # noqa: F401

    from posttrain.evaluation.mmlu import select_subjects
    from posttrain.evaluation.mmlu_reference import run_lm_eval
    from posttrain.io import atomic_write_json

    work = Path(tempfile.mkdtemp(prefix="bench_mmlu_"))
    model = args.model
    if model is None:
        from posttrain.data import tokenizer_corpus
        from posttrain.models import make_tiny_model

        model = str(make_tiny_model(work / "tiny", tokenizer_corpus(), seed=0))
    subjects = select_subjects(args.data, args.subjects)

    start = time.perf_counter()
    reference = run_lm_eval(model, args.data, subjects, work / "lm_eval", args.num_fewshot, args.limit,
                            args.batch_size, device=args.device)["questions"]
    lm_eval_seconds = time.perf_counter() - start
    records, ours_seconds = _ours(model, args.data, subjects, args)
    same, gap = _agreement(records, reference)
    result = {"model": model, "data": args.data, "subjects": subjects, "limit": args.limit,
              "num_fewshot": args.num_fewshot, "batch_size": args.batch_size, "device": args.device,
              "questions": len(records), "lm_eval_hf_seconds": round(lm_eval_seconds, 2),
              "ours_transformers_seconds": round(ours_seconds, 2),
              "speedup_transformers": round(lm_eval_seconds / ours_seconds, 2),
              "same_predictions": same, "max_loglikelihood_difference": gap}
    if args.vllm:
        vllm_records, startup, scoring = _ours_vllm(model, args.data, subjects, args)
        result |= {"ours_vllm_engine_start_seconds": round(startup, 2), "ours_vllm_scoring_seconds": round(scoring, 2),
                   "speedup_vllm_including_start": round(lm_eval_seconds / (startup + scoring), 2),
                   "vllm_same_predictions_as_lm_eval": _agreement(vllm_records, reference)[0]}
    atomic_write_json(args.output, result)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
