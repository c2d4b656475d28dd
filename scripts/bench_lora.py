"""Where LoRA's extra per-step work comes from, and what PEFT's dtype options buy (docs/methods.md §9).

DPO steps on a Qwen2-0.5B-wide model (hidden 896, MLP 4864, 14 heads, 2 KV heads; `--layers` of its 24 layers,
vocabulary cut to 8192 since the LM head is the same for every configuration), weights in bf16 trained under bf16
autocast on CPU, which is the GPU check's precision setting, so PEFT's dtype casts happen here as they do there.
Each configuration runs in a fresh process, configurations interleaved, on the same batches. Reported per
configuration: median step time (CPU time of the step, one torch thread; wall time beside it), the ratio to full
fine-tuning, computing-operator count per step (each launches a kernel on a GPU: device-agnostic evidence) with the
operators LoRA adds over full fine-tuning broken out, and the step's peak tensor memory.

    python scripts/bench_lora.py --layers 1 --steps 2 --repeats 1   # what docs/methods.md §9 reports

Configurations:
  full                 full fine-tuning
  lora-dropout-live    LoRA r16 all-linear, dropout 0.05 kept live (disable_dropout false), PEFT's dtype defaults
  lora-peft-defaults   LoRA r16 all-linear, dropout 0.05, fp32 adapters with input casts (PEFT's and TRL's defaults;
                       DPO's disable_dropout, on by default, sets every nn.Dropout to p=0, LoRA's too)
  lora-no-dropout      ... lora_dropout 0
  lora-no-input-cast   ... and PEFT's per-layer input cast off (autocast casts the small adapter weights instead)
  lora-bf16-adapters   dropout 0, adapters kept in bf16 (PEFT's autocast_adapter_dtype=False): no casts at all
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import Counter
from pathlib import Path

from posttrain.profiling import RESULT_PREFIX, report_summary, run_workers_interleaved

CONFIGS = {
    "full": None,
    "lora-dropout-live": {"lora_dropout": 0.05, "autocast_adapter_dtype": True, "cast_input_dtype": True,
                          "disable_dropout": False},
    "lora-peft-defaults": {"lora_dropout": 0.05, "autocast_adapter_dtype": True, "cast_input_dtype": True},
    "lora-no-dropout": {"lora_dropout": 0.0, "autocast_adapter_dtype": True, "cast_input_dtype": True},
    "lora-no-input-cast": {"lora_dropout": 0.0, "autocast_adapter_dtype": True, "cast_input_dtype": False},
    "lora-bf16-adapters": {"lora_dropout": 0.0, "autocast_adapter_dtype": False, "cast_input_dtype": False},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="pairs per step")
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence (prompt 32 + answer)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="timed steps")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", help="also write the summary as JSON here")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build(workdir: Path, args) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from posttrain.data import tokenizer_corpus
    from posttrain.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(tokenizer_corpus())
    config = Qwen2Config(vocab_size=8192, hidden_size=896, intermediate_size=4864, num_hidden_layers=args.layers,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    digits = "0123456789" * (args.length // 10 + 1)
    rows = [{"prompt": digits[:32], "chosen": digits[1:args.length - 32], "rejected": digits[2:args.length - 31]}
            for _ in range(args.batch * (args.warmup + args.steps + 1))]
    (workdir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def worker(args) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig

    from posttrain.models import load_causal_lm, load_tokenizer, tune_lora_layers
    from posttrain.profiling import profiled_step_callback, step_timer
    from posttrain.trainers.dpo import DPOConfig, DPOTrainer

    torch.set_num_threads(1)  # the step's CPU time is then its work, whatever the neighbours on a shared machine
    workdir, options = Path(args.workdir), CONFIGS[args.worker]
    config = DPOConfig(output_dir=str(workdir / args.worker), per_device_train_batch_size=args.batch,
                       max_steps=args.warmup + args.steps + 1, learning_rate=1e-5, lr_scheduler_type="constant",
                       max_length=1024, use_cpu=True, bf16=True, report_to="none", save_strategy="no",
                       logging_steps=1000, disable_tqdm=True, seed=0, ref_logps_cache_dir=str(workdir / "cache"),
                       disable_dropout=(options or {}).get("disable_dropout", True))
    peft_config = None if options is None else LoraConfig(
        r=16, lora_alpha=32, lora_dropout=options["lora_dropout"], target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=load_causal_lm(str(workdir / "model"), dtype=torch.bfloat16), args=config,
                         train_dataset=load_dataset("json", data_files=str(workdir / "pairs.jsonl"), split="train"),
                         processing_class=load_tokenizer(str(workdir / "model")), peft_config=peft_config)
    if options is not None:
        tune_lora_layers(trainer.model, autocast_forward=True,
                         autocast_adapter_dtype=options["autocast_adapter_dtype"],
                         cast_input_dtype=options["cast_input_dtype"])
    timer, profiled = step_timer(), profiled_step_callback(args.warmup + args.steps + 1, memory=True)
    trainer.add_callback(timer)
    trainer.add_callback(profiled)
    trainer.train()
    return {"config": args.worker, "median_step_s": timer.median(args.warmup, args.steps),
            "median_step_cpu_s": timer.median(args.warmup, args.steps, cpu=True), **profiled.summary,
            "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(args)), flush=True)
        return {}
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        build(Path(tmp), args)
        forwarded = [f"--{k}={getattr(args, k)}" for k in ("layers", "batch", "length", "warmup", "steps")]
        results = run_workers_interleaved(__file__, list(CONFIGS), args.repeats, ["--workdir", tmp, *forwarded])
    rows = {}
    for name, runs in results.items():
        fastest = min(runs, key=lambda r: r["median_step_cpu_s"])
        rows[name] = {**fastest, "spread": round(statistics.pstdev(r["median_step_cpu_s"] for r in runs)
                                                 / fastest["median_step_cpu_s"], 3)}
    full_ops = Counter(rows["full"].get("compute_op_counts", {}))
    for row in rows.values():
        extra = Counter(row.pop("compute_op_counts", {}))
        extra.subtract(full_ops)
        row["ops_vs_full"] = {op: n for op, n in extra.most_common() if n}
        row["cpu_step_vs_full"] = round(row["median_step_cpu_s"] / rows["full"]["median_step_cpu_s"], 3)
        row["wall_step_vs_full"] = round(row["median_step_s"] / rows["full"]["median_step_s"], 3)
    summary = {"rows": rows, "setup": {k: getattr(args, k) for k in ("layers", "batch", "length", "warmup", "steps",
                                                                      "repeats")}}
    report_summary(summary, args.output)
    return summary


if __name__ == "__main__":
    main()
