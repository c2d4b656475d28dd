"""Benchmark a DYPO step against a TRL GRPO step (docs/methods.md §4) with the same generation settings.

Both trainers get the same model (built from a config, random init, saved to a temp dir), the same prompts in the
same order, the same reward function and the same sampling settings (k rollouts per prompt, temperature, completion
length), each in its own fresh process; configurations alternate over the repeats. Reported: the median step time
over the timed steps (after warm-up), generation included, and the ratio DYPO / GRPO (target <= 1.1).

    python scripts/bench_dypo.py                                  # CPU, a 25M-parameter Llama
    python scripts/bench_dypo.py --hidden 896 --layers 24 --cuda  # on a GPU

The reward is synthetic so that all three routes occur at fixed shares whatever the (untrained) model writes: a
third of the prompts score every rollout 0 (hard: DYPO adds an SFT forward on a teacher trace), a third score every
rollout 1 (easy: dropped), and the rest score each rollout by the parity of a hash of its text (mid: GRPO + GAL).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import zlib
from pathlib import Path

from bench_rpo import build_model  # scripts/ is on sys.path when this file runs as a script

from posttrain.profiling import RESULT_PREFIX, run_workers_interleaved

CONFIGS = ("trl-grpo", "dypo")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--k", type=int, default=8, help="rollouts per prompt (num_generations)")
    parser.add_argument("--completion_len", type=int, default=32, help="max_completion_length")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--repeats", type=int, default=2, help="run every configuration this many times, interleaved")
    parser.add_argument("--cuda", action="store_true", help="train on the GPU in bf16")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def route_mixing_reward(prompts, completions, **kwargs) -> list[float]:
    """Hard, easy and mid groups in fixed shares, by prompt (see the module docstring)."""
    rewards = []
    for prompt, completion in zip(prompts, completions):
        kind = _stable_hash(prompt[-1]["content"]) % 3
        text = completion[0]["content"]
        rewards.append(0.0 if kind == 0 else 1.0 if kind == 1 else float(_stable_hash(text) % 2))
    return rewards


def worker(args) -> dict:
    import torch
    import trl

    from posttrain.data import load_any_dataset
    from posttrain.models import load_causal_lm, load_tokenizer
    from posttrain.profiling import peak_memory_mib, step_timer
    from posttrain.trainers.dypo import DYPOConfig, DYPOTrainer

    workdir = Path(args.workdir)
    model_path = str(workdir / "model")
    device = {"bf16": True} if args.cuda else {"use_cpu": True, "bf16": False}
    common = {"output_dir": str(workdir / args.worker), "per_device_train_batch_size": args.prompts * args.k,
              "num_generations": args.k, "max_completion_length": args.completion_len, "temperature": 1.0,
              "max_steps": args.warmup + args.steps, "learning_rate": 1e-6, "gradient_checkpointing": False,
              "report_to": "none", "save_strategy": "no", "logging_steps": 1, "dataloader_num_workers": 0,
              "seed": 0, "disable_tqdm": True, **device}
    config_class, trainer_class = (trl.GRPOConfig, trl.GRPOTrainer) if args.worker == "trl-grpo" \
        else (DYPOConfig, DYPOTrainer)
    data = load_any_dataset("pg:sort8/verifiable", "train", num_examples=args.prompts * (args.warmup + args.steps))
    trainer = trainer_class(model=load_causal_lm(model_path), args=config_class(**common), train_dataset=data,
                            processing_class=load_tokenizer(model_path), reward_funcs=[route_mixing_reward])
    if args.cuda:
        torch.cuda.reset_peak_memory_stats()
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    routes = {key: statistics.mean(row[key] for row in trainer.state.log_history if key in row)
              for key in ("dypo/easy_share", "dypo/hard_share", "dypo/mid_share")
              if any(key in row for row in trainer.state.log_history)}
    return {"config": args.worker, "median_step_s": timer.median(args.warmup), "steps": args.steps,
            "peak_memory_mib": round(peak_memory_mib("cuda" if args.cuda else "cpu"), 1),
            "memory_kind": "cuda max allocated" if args.cuda else "max RSS", "routes": routes,
            "parameters": sum(p.numel() for p in trainer.model.parameters())}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(args)), flush=True)
        return {}
    with tempfile.TemporaryDirectory(prefix="bench-dypo-") as tmp:
        build_model(Path(tmp), args.hidden, args.layers)
        forwarded = [f"--{k}={getattr(args, k)}" for k in ("hidden", "layers", "prompts", "k", "completion_len",
                                                           "warmup", "steps")]
        results = run_workers_interleaved(__file__, CONFIGS, args.repeats,
                                          ["--workdir", tmp, *forwarded, *(["--cuda"] if args.cuda else [])])
    summary = {name: {"median_step_s": statistics.median(r["median_step_s"] for r in runs),
                      "step_s_per_repeat": [round(r["median_step_s"], 4) for r in runs],
                      "peak_memory_mib": max(r["peak_memory_mib"] for r in runs)}
               for name, runs in results.items()}
    summary["dypo"]["routes"] = results["dypo"][0]["routes"]
    summary["ratios"] = {
        "dypo / trl_grpo step time (target <= 1.1)": summary["dypo"]["median_step_s"]
        / summary["trl-grpo"]["median_step_s"],
        "peak memory dypo / trl_grpo": summary["dypo"]["peak_memory_mib"] / summary["trl-grpo"]["peak_memory_mib"],
    }
    summary["setup"] = {"parameters": results["dypo"][0]["parameters"], "prompts_per_step": args.prompts,
                        "rollouts_per_prompt": args.k, "max_completion_length": args.completion_len,
                        "timed_steps": args.steps, "repeats": args.repeats, "device": "cuda" if args.cuda else "cpu",
                        "memory": results["dypo"][0]["memory_kind"]}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
