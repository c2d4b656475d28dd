"""Benchmark SRPO's training step against DPO's on the same pairs, side by side in one process (docs/methods.md §2).

SRPO scores six sequences per pair (y_w and y_l given x, given T(x, y_l) and given T(x, y_w)) in one forward pass,
DPO two, so the target is SRPO step / DPO step <= 3.2. Both train the same model (random init, saved once) on the
same pairs, batch and order, with the reference log-probs precomputed (posttrain's disk cache) so that neither holds
a second model. Runs alternate (DPO, SRPO, DPO, SRPO, ...) in this one process so that machine load hits both alike.
Reported: the median step time after warm-up and its ratio, the padded tokens per step, and the peak memory of one
training step (forward and backward, gradient buffers included) above the memory held before it: on CPU the running
sum of torch.profiler's allocation events (torch tensors only, not Python objects), on CUDA
torch.cuda.max_memory_allocated.

A revision sequence holds the prompt, the draft and the template around them, so its length is |x| + |y| + |T| and
SRPO's padded batch is about 3 (|x| + 2|y| + |T|) / (|x| + |y|) times DPO's tokens. The default data has long prompts
and short answers, like summarisation (the paper's setting), where that factor is close to 3; `--prompt_digits 8`
gives sort8's short prompts, where the template and the draft dominate.

    python scripts/bench_srpo.py                       # CPU: 9.8M-parameter Llama, vocabulary 32k, 96-digit prompts
    python scripts/bench_srpo.py --prompt_digits 8 --answer_digits 8 --batch 8   # sort8-sized pairs
    python scripts/bench_srpo.py --hidden 1024 --layers 16 --cuda
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from pathlib import Path

METHODS = ("dpo", "srpo")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary rows (the tokenizer uses the first few)")
    parser.add_argument("--prompt_digits", type=int, default=96, help="prompt length (one token per digit)")
    parser.add_argument("--answer_digits", type=int, default=16, help="chosen/rejected length")
    parser.add_argument("--batch", type=int, default=2, help="pairs per step")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--repeats", type=int, default=2, help="train each method this many times, interleaved")
    parser.add_argument("--cuda", action="store_true", help="train on the GPU in bf16")
    parser.add_argument("--output", help="also write the summary to this JSON file")
    return parser.parse_args(argv)


def build_model(path: Path, args) -> None:
    from posttrain.data import tokenizer_corpus
    from posttrain.models import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(tokenizer_corpus())
    model = build_tiny_model(tokenizer, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.hidden // 64,
                             intermediate_size=int(args.hidden * 2.75),
                             max_position_embeddings=args.prompt_digits + 4 * args.answer_digits + 128)
    model.resize_token_embeddings(args.vocab)  # a real vocabulary's LM-head cost; the extra rows are never targets
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def pairs(args, n: int):
    """`n` chat pairs: a long digit prompt, two different short digit answers."""
    from datasets import Dataset

    from posttrain.data.tasks import assistant, user

    rng = random.Random(0)

    def digits(k: int) -> str:
        return "".join(rng.choice("0123456789") for _ in range(k))

    rows = [{"prompt": user("summarise " + digits(args.prompt_digits)), "chosen": assistant(digits(args.answer_digits)),
             "rejected": assistant(digits(args.answer_digits))} for _ in range(n)]
    return Dataset.from_list(rows)


def trainer_for(method: str, model_path: str, workdir: Path, data, args):
    from posttrain.models import load_causal_lm, load_tokenizer
    from posttrain.trainers.dpo import DPOConfig, DPOTrainer
    from posttrain.trainers.srpo import SRPOConfig, SRPOTrainer

    device = {"bf16": True} if args.cuda else {"use_cpu": True, "bf16": False}
    common = {"output_dir": str(workdir / method), "per_device_train_batch_size": args.batch,
              "max_steps": args.warmup + args.steps, "learning_rate": 1e-5, "beta": 0.1,
              "lr_scheduler_type": "constant", "max_length": args.prompt_digits + 4 * args.answer_digits + 64,
              "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no", "logging_steps": 1000,
              "dataloader_num_workers": 0, "seed": 0, "disable_tqdm": True,
              "ref_logps_cache_dir": str(workdir / "cache"), **device}
    config = SRPOConfig(**common) if method == "srpo" else DPOConfig(**common)  # SRPO: the default template
    trainer_class = SRPOTrainer if method == "srpo" else DPOTrainer
    return trainer_class(model=load_causal_lm(model_path), args=config, train_dataset=data,
                         processing_class=load_tokenizer(model_path))


def step_peak_mib(trainer, batch, cuda: bool) -> float:
    """Peak memory of one forward + backward above the memory held before it (see the module docstring)."""
    import torch

    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        trainer.training_step(trainer.model, batch)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.training_step(trainer.model, batch)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak / 2**20


def run_once(method: str, model_path: str, workdir: Path, data, args) -> dict:
    """Train `method` for warm-up + timed steps; then measure one more step's memory on the first batch."""
    from posttrain.profiling import step_timer

    trainer = trainer_for(method, model_path, workdir, data, args)
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    return {"median_step_s": timer.median(args.warmup), "peak_step_memory_mib": step_peak_mib(trainer, batch,
                                                                                              args.cuda),
            "padded_tokens_per_step": batch["input_ids"].numel(),
            "real_tokens_per_step": int(batch["attention_mask"].sum()), "sequences_per_step": len(batch["input_ids"]),
            "parameters": sum(p.numel() for p in trainer.model.parameters())}


def summarise(results: dict[str, list[dict]], args) -> dict:
    summary = {name: {"median_step_s": statistics.median(r["median_step_s"] for r in runs),
                      "step_s_per_repeat": [round(r["median_step_s"], 3) for r in runs],
                      **{k: runs[0][k] for k in ("peak_step_memory_mib", "padded_tokens_per_step",
                                                 "real_tokens_per_step", "sequences_per_step")}}
               for name, runs in results.items()}
    dpo, srpo = summary["dpo"], summary["srpo"]
    summary["ratios"] = {
        "step time srpo / dpo (target <= 3.2)": srpo["median_step_s"] / dpo["median_step_s"],
        "peak step memory srpo / dpo": srpo["peak_step_memory_mib"] / dpo["peak_step_memory_mib"],
        "padded tokens srpo / dpo": srpo["padded_tokens_per_step"] / dpo["padded_tokens_per_step"],
        "sequences srpo / dpo": srpo["sequences_per_step"] / dpo["sequences_per_step"],
    }
    summary["setup"] = {"parameters": results["dpo"][0]["parameters"], "vocab": args.vocab,
                        "prompt_digits": args.prompt_digits, "answer_digits": args.answer_digits,
                        "batch_pairs": args.batch, "timed_steps": args.steps, "repeats": args.repeats,
                        "device": "cuda" if args.cuda else "cpu",
                        "memory": "cuda max allocated above the step's start" if args.cuda else
                                  "torch.profiler allocation events: peak tensor bytes above the step's start"}
    return summary


def main(argv=None) -> dict:
    from posttrain.console import quiet_libraries
    from posttrain.io import atomic_write_json

    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-srpo-") as tmp, quiet_libraries():
        workdir = Path(tmp)
        build_model(workdir / "model", args)
        data = pairs(args, args.batch * (args.warmup + args.steps))
        results: dict[str, list[dict]] = {name: [] for name in METHODS}
        for _ in range(args.repeats):
            for name in METHODS:
                results[name].append(run_once(name, str(workdir / "model"), workdir, data, args))
    summary = summarise(results, args)
    print(json.dumps(summary, indent=2))
    if args.output:
        atomic_write_json(args.output, summary)
    return summary


if __name__ == "__main__":
    main()
