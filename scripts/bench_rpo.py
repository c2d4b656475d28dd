"""Benchmark RPO's step time and memory against TRL's DPO `[sigmoid, sft]`, and cached vs live reference.

Every configuration trains the same model (built from a config, random init, saved to a temp dir) on the same
batches (same data, seed and order) in its own fresh process, so peak memory is per configuration. Reported:
median step time over the timed steps (after warm-up), the step-time ratios, and peak memory (max RSS on CPU,
max allocated on CUDA).

    python scripts/bench_rpo.py                       # CPU, a 25M-parameter Llama
    python scripts/bench_rpo.py --hidden 896 --layers 24 --cuda   # on a GPU

Configurations:
  trl-sigmoid-sft  trl.DPOTrainer, loss_type [sigmoid, sft], reference log-probs precomputed in memory (TRL's own)
  rpo-token        posttrain RPOTrainer, sft_normalization token (the same loss), reference from the disk cache
  rpo-sum          posttrain RPOTrainer, sft_normalization sum, reference from the disk cache
  rpo-live-ref     posttrain RPOTrainer, sft_normalization sum, live reference model (precompute off)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from posttrain.profiling import RESULT_PREFIX, run_workers_interleaved

CONFIGS = ("trl-sigmoid-sft", "rpo-token", "rpo-sum", "rpo-live-ref")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16, help="pairs per step")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--repeats", type=int, default=2, help="run every configuration this many times, interleaved")
    parser.add_argument("--cuda", action="store_true", help="train on the GPU in bf16")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_model(workdir: Path, hidden: int, layers: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain.data import tokenizer_corpus
    from posttrain.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(tokenizer_corpus())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, head_dim=64,
                         intermediate_size=int(hidden * 2.75), max_position_embeddings=256, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    path = workdir / "model"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def worker(args) -> dict:
    import trl

    from posttrain.data import load_any_dataset
    from posttrain.models import load_causal_lm, load_tokenizer
    from posttrain.profiling import timed_train
    from posttrain.trainers.rpo import RPOConfig, RPOTrainer

    workdir = Path(args.workdir)
    model_path = str(workdir / "model")
    device = {"bf16": True} if args.cuda else {"use_cpu": True, "bf16": False}
    common = {"output_dir": str(workdir / args.worker), "per_device_train_batch_size": args.batch,
              "max_steps": args.warmup + args.steps, "learning_rate": 1e-5, "beta": 0.1, "max_length": 64,
              "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no", "logging_steps": 1000,
              "dataloader_num_workers": 0, "seed": 0, "disable_tqdm": True, **device}
    if args.worker == "trl-sigmoid-sft":
        config = trl.DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0], precompute_ref_log_probs=True,
                               **common)
        trainer_class = trl.DPOTrainer
    else:
        normalization = "token" if args.worker == "rpo-token" else "sum"
        config = RPOConfig(rpo_eta=1.0, sft_normalization=normalization, warmup_steps=0, lr_scheduler_type="linear",
                           precompute_ref_log_probs=args.worker != "rpo-live-ref",
                           ref_logps_cache_dir=str(workdir / "cache"), **common)
        trainer_class = RPOTrainer
    data = load_any_dataset("pg:sort8/preference", "train", num_examples=args.batch * (args.warmup + args.steps))
    trainer = trainer_class(model=load_causal_lm(model_path), args=config, train_dataset=data,
                            processing_class=load_tokenizer(model_path))
    timing = timed_train(trainer, args.cuda, args.warmup)
    return {"config": args.worker, **timing, "steps": args.steps,
            "reference_model_loaded": trainer.ref_model is not None,
            "parameters": sum(p.numel() for p in trainer.model.parameters())}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(args)), flush=True)
        return {}
    with tempfile.TemporaryDirectory(prefix="bench-rpo-") as tmp:
        workdir = Path(tmp)
        build_model(workdir, args.hidden, args.layers)
        forwarded = [f"--{k}={getattr(args, k)}" for k in ("hidden", "layers", "batch", "warmup", "steps")]
        results = run_workers_interleaved(__file__, CONFIGS, args.repeats,
                                          ["--workdir", tmp, *forwarded, *(["--cuda"] if args.cuda else [])])
    summary = {name: {"median_step_s": statistics.median(r["median_step_s"] for r in runs),
                      "peak_memory_mib": max(r["peak_memory_mib"] for r in runs),
                      "reference_model_loaded": runs[0]["reference_model_loaded"]}
               for name, runs in results.items()}
    step = {name: s["median_step_s"] for name, s in summary.items()}
    summary["ratios"] = {
        "rpo_token / trl_sigmoid_sft (target <= 1.05)": step["rpo-token"] / step["trl-sigmoid-sft"],
        "rpo_sum / trl_sigmoid_sft": step["rpo-sum"] / step["trl-sigmoid-sft"],
        "rpo_sum cached / rpo_sum live reference (target <= 0.7)": step["rpo-sum"] / step["rpo-live-ref"],
        "peak memory cached / live reference": summary["rpo-sum"]["peak_memory_mib"]
        / summary["rpo-live-ref"]["peak_memory_mib"],
    }
    summary["setup"] = {"parameters": results["rpo-sum"][0]["parameters"], "batch_pairs": args.batch,
                        "timed_steps": args.steps, "repeats": args.repeats, "device": "cuda" if args.cuda else "cpu",
                        "memory": results["rpo-sum"][0]["memory_kind"]}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
