"""Benchmark posttrain's DPO engine against TRL's own `trl.DPOTrainer` on the same batches (docs/methods.md §9).

Every configuration trains the same model (a Qwen2-shaped decoder built from a config, random init, vocabulary
32k so that the LM head and its log-softmax dominate, as at 0.5B with 152k) on the same examples in the same order,
in its own fresh process, configurations interleaved across `--repeats` rounds. Two batch shapes:

  var    lengths drawn from a long-tailed distribution (below), padded per batch: what real preference data costs
  equal  every prompt and answer the same length: no padding, so only the engine itself differs

Length distribution of `var`: log-normal, fitted to AlpacaEval's 805 instructions and its GPT-4 / Claude-2 reference
answers (characters / 4 as tokens): prompts have median 27 tokens, sigma 0.86 (p99 ~ 300); answers median 210-375,
sigma 0.8-1.0. Here answers use median 96 and sigma 0.9 (the same shape scaled down for CPU time), prompts median 32,
sigma 0.86; chosen and rejected lengths are drawn independently, and clipped to [4, 256] (prompt) / [4, 384].

Configurations (per shape): trl (`trl.DPOTrainer`, reference log-probs precomputed in memory), ours (posttrain's
`DPOTrainer`, plain path), ours-chunked (`logps_chunk_size`), ours-packed
(`padding_free: true`) and ours-chunked-packed. Reported: median step time, the step's peak tensor memory
(`cpu_step_peak_mib`: the allocator's high-water mark above the resident weights and optimizer state, recorded by
torch.profiler on one extra step; max RSS of a fresh process also counts Python, torch and the data, which hides
the difference), max RSS, and the three ratios against TRL with their targets. Step time is the process's CPU time
per step with one torch thread per worker (`--threads`): on a shared machine wall time mostly measures the
neighbours, CPU time what the step cost; both are printed.

    python scripts/bench_dpo_vs_trl.py                  # every configuration, 2 interleaved rounds
    python scripts/bench_dpo_vs_trl.py --batch 2 --repeats 1 --warmup 1 --steps 3   # docs/methods.md §9.1's run
    python scripts/bench_dpo_vs_trl.py --batch 2 --steps 2 --warmup 1 --repeats 1 --vocab 4096   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
from pathlib import Path

from posttrain.profiling import RESULT_PREFIX, report_summary, run_workers_interleaved

SHAPES = ("var", "equal")
VARIANTS = ("trl", "ours", "ours-chunked", "ours-packed", "ours-chunked-packed")
LENGTHS = {"prompt": (32, 0.86, 4, 256), "answer": (96, 0.9, 4, 384)}  # median, sigma, min, max (tokens)
EQUAL = {"prompt": 48, "answer": 128}  # close to the var shape's mean lengths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every configuration, interleaved")
    parser.add_argument("--chunk", type=int, default=256, help="logps_chunk_size of the chunked configurations")
    parser.add_argument("--configs", nargs="+", help="only these shape/variant configurations (default: all; the "
                                                     "three ratios need var/trl, equal/trl, equal/ours and the best "
                                                     "of ours)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (1: CPU time = work)")
    parser.add_argument("--output", help="also write the summary as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def configurations() -> list[str]:
    return [f"{shape}/{variant}" for shape in SHAPES for variant in VARIANTS]


def draw_length(rng: random.Random, median: int, sigma: float, low: int, high: int) -> int:
    return min(high, max(low, round(rng.lognormvariate(math.log(median), sigma))))


def write_pairs(path: Path, rows: int, shape: str) -> Path:
    """Preference rows of digit strings (each digit one token of the tiny tokenizer, so lengths are exact)."""
    rng = random.Random(0)

    def text(kind: str) -> str:
        n = EQUAL[kind] if shape == "equal" else draw_length(rng, *LENGTHS[kind])
        return "".join(rng.choice("0123456789") for _ in range(n))

    path.write_text("".join(json.dumps({"prompt": text("prompt"), "chosen": text("answer"),
                                        "rejected": text("answer")}) + "\n" for _ in range(rows)))
    return path


def build_model(workdir: Path, hidden: int, layers: int, vocab: int) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from posttrain.data import tokenizer_corpus
    from posttrain.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(tokenizer_corpus())
    tokenizer.model_max_length = 2048
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 128), head_dim=64,
                         max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    path = workdir / "model"
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_trainer(variant: str, workdir: Path, args):
    """The trainer of one configuration; every one sees the same model, rows, order and hyper-parameters."""
    import trl
    from datasets import Dataset

    from posttrain.models import load_causal_lm, load_tokenizer
    from posttrain.trainers.dpo import DPOConfig, DPOTrainer

    shape, name = variant.split("/")
    model_path = str(workdir / "model")
    rows = [json.loads(line) for line in (workdir / f"{shape}.jsonl").read_text().splitlines()]
    common = {"output_dir": str(workdir / variant.replace("/", "-")), "per_device_train_batch_size": args.batch,
              "max_steps": args.warmup + args.steps + 1, "learning_rate": 1e-5, "beta": 0.1, "max_length": 1024,
              "precompute_ref_log_probs": True, "gradient_checkpointing": False, "report_to": "none",
              "save_strategy": "no", "logging_steps": 1000, "dataloader_num_workers": 0, "seed": 0,
              "disable_tqdm": True, "use_cpu": True, "bf16": False, "lr_scheduler_type": "constant"}
    if name == "trl":
        config, trainer_class = trl.DPOConfig(**common), trl.DPOTrainer
    else:
        extra = {"padding_free": "packed" in name, **({"logps_chunk_size": args.chunk} if "chunked" in name else {})}
        config, trainer_class = DPOConfig(ref_logps_cache_dir=str(workdir / "cache"), **common, **extra), DPOTrainer
    return trainer_class(model=load_causal_lm(model_path), args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=load_tokenizer(model_path))


def worker(args) -> dict:
    import torch

    from posttrain.profiling import peak_memory_mib, profiled_step_callback, step_timer
    from posttrain.trainers.logprobs import token_count

    torch.set_num_threads(args.threads)
    trainer = make_trainer(args.worker, Path(args.workdir), args)
    timer, profiled = step_timer(), profiled_step_callback(args.warmup + args.steps + 1, memory=True)
    trainer.add_callback(timer)
    trainer.add_callback(profiled)
    trainer.train()
    loader = trainer.get_train_dataloader()
    batches = [b for b, _ in zip(loader, range(args.warmup + args.steps))]
    real = [int(token_count(b)) for b in batches]
    return {"config": args.worker, "median_step_s": timer.median(args.warmup, args.steps),
            "median_step_cpu_s": timer.median(args.warmup, args.steps, cpu=True),
            "max_rss_mib": round(peak_memory_mib("cpu"), 1), "packed": bool(getattr(trainer, "padding_free", False)),
            "real_tokens_per_step": statistics.mean(real),
            "padded_tokens_per_step": statistics.mean(b["input_ids"].numel() for b in batches), **profiled.summary}


def summarize(results: dict[str, list[dict]]) -> dict:
    """Per configuration: the fastest round's median step (interference only adds time) and the highest peaks."""
    rows = {}
    for name, runs in results.items():
        rows[name] = {"median_step_s": round(min(r["median_step_s"] for r in runs), 4),
                      "median_step_cpu_s": round(min(r["median_step_cpu_s"] for r in runs), 4),
                      "cpu_step_peak_mib": max(r.get("cpu_step_peak_mib", float("nan")) for r in runs),
                      "max_rss_mib": max(r["max_rss_mib"] for r in runs), "packed": runs[0]["packed"],
                      "aten_ops": runs[0].get("aten_ops"),
                      **{k: runs[0][k] for k in ("real_tokens_per_step", "padded_tokens_per_step")}}
    return rows


def ratios(rows: dict) -> dict:
    """Every configuration of ours against TRL on the same shape, and the issue's three targets, each met by the
    best available configuration of ours (chunked for memory, packed for variable lengths, plain for equal). Step
    time is the CPU time of the step (see `step_timer`); the wall-time ratios are listed beside it."""
    found = {}
    for name in rows:
        shape, variant = name.split("/")
        trl_row = rows.get(f"{shape}/trl")
        if variant != "trl" and trl_row:
            found[f"{name} / trl: step time"] = rows[name]["median_step_cpu_s"] / trl_row["median_step_cpu_s"]
            found[f"{name} / trl: wall step time"] = rows[name]["median_step_s"] / trl_row["median_step_s"]
            found[f"{name} / trl: peak step memory"] = rows[name]["cpu_step_peak_mib"] / trl_row["cpu_step_peak_mib"]
    targets = {}
    for label, candidates, kind, target in (
            ("peak step memory, equal lengths", ("equal/ours-chunked", "equal/ours"), "peak step memory", 0.5),
            ("step time, variable lengths", ("var/ours-chunked-packed", "var/ours-packed", "var/ours"), "step time",
             0.8),
            ("step time, equal lengths", ("equal/ours",), "step time", 1.05)):
        config = next((c for c in candidates if f"{c} / trl: {kind}" in found), None)
        if config:
            value = found[f"{config} / trl: {kind}"]
            targets[f"{label}: {config} / trl"] = {"ratio": round(value, 3), "target": target, "met": value <= target}
    return {"targets": targets, "all": {k: round(v, 3) for k, v in found.items()}}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(args)), flush=True)
        return {}
    configs = args.configs or configurations()
    with tempfile.TemporaryDirectory(prefix="bench-dpo-trl-") as tmp:
        workdir = Path(tmp)
        build_model(workdir, args.hidden, args.layers, args.vocab)
        for shape in SHAPES:
            write_pairs(workdir / f"{shape}.jsonl", args.batch * (args.warmup + args.steps + 1), shape)
        forwarded = [f"--{k}={getattr(args, k)}" for k in ("hidden", "layers", "vocab", "batch", "warmup", "steps",
                                                          "chunk", "threads")]
        results = run_workers_interleaved(__file__, configs, args.repeats, ["--workdir", tmp, *forwarded])
    rows = summarize(results)
    summary = {"rows": rows, "ratios": ratios(rows),
               "setup": {k: getattr(args, k) for k in ("hidden", "layers", "vocab", "batch", "warmup", "steps",
                                                       "repeats", "chunk", "threads")}}
    report_summary(summary, args.output)
    return summary


if __name__ == "__main__":
    main()
