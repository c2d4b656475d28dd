"""Benchmark the layer-frozen unlearning step against a full fine-tune step of the same loss on the same batches.

Both configurations run posttrain's UnlearnTrainer (joint loss -CE_forget + alpha * CE_retain) on the same model
(an 8-layer Llama built from a config, random init, saved to a temp dir) and the same batches (LUME-format rows of
the committed fixture, same seed and order), each in its own fresh process, interleaved over repeats. They differ
only in what trains: the MLPs of `--trained_layers` (the optimizer holds only those) or every parameter. Reported:
median step time after warm-up, the optimizer state's size (AdamW's two moments), peak memory (max RSS on CPU, max
allocated on CUDA), and their ratios.

    python scripts/bench_unlearn.py                        # CPU, hidden 768 (about 58M parameters)
    python scripts/bench_unlearn.py --hidden 2048 --cuda   # on a GPU

Configurations:
  layer-frozen  unlearn_layers = --trained_layers (default 0-2: 3 of 8 layers, as the paper's 6 of OLMo-1B's 16)
  full          unlearn_layers full: every parameter trains
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench_rpo import build_model  # scripts/ is on sys.path when this file runs as a script

from posttrain.profiling import RESULT_PREFIX, report_summary, run_workers_interleaved

CONFIGS = ("layer-frozen", "full")
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lume"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--trained_layers", default="0-2", help="the layer-frozen configuration's MLP layers")
    parser.add_argument("--batch", type=int, default=16, help="rows per step")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--repeats", type=int, default=2, help="run every configuration this many times, interleaved")
    parser.add_argument("--cuda", action="store_true", help="train on the GPU in bf16")
    parser.add_argument("--output", help="also write the summary as JSON here")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def optimizer_state_mib(optimizer) -> float:
    """Bytes of every tensor in the optimizer's state (AdamW: exp_avg and exp_avg_sq per trained parameter)."""
    import torch

    total = sum(value.numel() * value.element_size() for state in optimizer.state.values()
                for value in state.values() if isinstance(value, torch.Tensor))
    return total / 2**20


def worker(args) -> dict:
    from datasets import concatenate_datasets

    from posttrain.data import load_any_dataset
    from posttrain.models import load_causal_lm, load_tokenizer
    from posttrain.profiling import timed_train
    from posttrain.trainers.unlearn import UnlearnConfig, UnlearnTrainer

    workdir = Path(args.workdir)
    model_path = str(workdir / "model")
    device = {"bf16": True} if args.cuda else {"use_cpu": True, "bf16": False}
    layers = args.trained_layers if args.worker == "layer-frozen" else "full"
    config = UnlearnConfig(output_dir=str(workdir / args.worker), unlearn_layers=layers, learning_rate=1e-5,
                           per_device_train_batch_size=args.batch, max_steps=args.warmup + args.steps,
                           max_length=args.max_length, gradient_checkpointing=False, report_to="none",
                           save_strategy="no", logging_steps=1000, dataloader_num_workers=0, seed=0,
                           disable_tqdm=True, ref_logps_cache_dir="", **device)
    data = concatenate_datasets([load_any_dataset(str(FIXTURE / f"{split}.jsonl")) for split in ("forget", "retain")])
    trainer = UnlearnTrainer(model=load_causal_lm(model_path), args=config, train_dataset=data,
                             processing_class=load_tokenizer(model_path))
    timing = timed_train(trainer, args.cuda, args.warmup)
    model = trainer.model
    return {"config": args.worker, **timing, "steps": args.steps,
            "optimizer_state_mib": round(optimizer_state_mib(trainer.optimizer), 2),
            "trained_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "parameters": sum(p.numel() for p in model.parameters())}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(args)), flush=True)
        return {}
    with tempfile.TemporaryDirectory(prefix="bench-unlearn-") as tmp:
        workdir = Path(tmp)
        build_model(workdir, args.hidden, args.layers)
        forwarded = [f"--{k}={getattr(args, k)}" for k in ("hidden", "layers", "trained_layers", "batch",
                                                           "max_length", "warmup", "steps")]
        results = run_workers_interleaved(__file__, CONFIGS, args.repeats,
                                          ["--workdir", tmp, *forwarded, *(["--cuda"] if args.cuda else [])])
    summary = {name: {"median_step_s": statistics.median(r["median_step_s"] for r in runs),
                      "step_s_per_repeat": [round(r["median_step_s"], 4) for r in runs],
                      "optimizer_state_mib": runs[0]["optimizer_state_mib"],
                      "peak_memory_mib": max(r["peak_memory_mib"] for r in runs),
                      "trained_parameters": runs[0]["trained_parameters"]}
               for name, runs in results.items()}
    frozen, full = summary["layer-frozen"], summary["full"]
    summary["ratios"] = {
        "step time layer-frozen / full (target <= 0.7)": frozen["median_step_s"] / full["median_step_s"],
        "optimizer state layer-frozen / full": frozen["optimizer_state_mib"] / full["optimizer_state_mib"],
        "peak memory layer-frozen / full": frozen["peak_memory_mib"] / full["peak_memory_mib"],
        "trained parameters layer-frozen / full": frozen["trained_parameters"] / full["trained_parameters"],
    }
    summary["setup"] = {"parameters": results["full"][0]["parameters"], "hidden": args.hidden, "layers": args.layers,
                        "trained_layers": args.trained_layers, "batch_rows": args.batch,
                        "max_length": args.max_length, "timed_steps": args.steps, "repeats": args.repeats,
                        "device": "cuda" if args.cuda else "cpu", "memory": results["full"][0]["memory_kind"]}
    report_summary(summary, args.output)
    return summary


if __name__ == "__main__":
    main()
