"""GPU check: DPO and RPO steps on a ~0.5B Qwen2-shaped model beside TRL's own DPOTrainer, full and LoRA, on one GPU.

Builds Qwen2.5-0.5B's architecture from a config (random init, bf16, sdpa attention; no download), writes a
synthetic preference set of fixed lengths, and trains each configuration through the normal recipe path
(`posttrain.train.build_trainer`); the `trl-*` configurations build `trl.DPOTrainer` from the same settings.
Reports per configuration: median step time, tokens/s, model-FLOPs utilisation against 989 TFLOP/s (H100/H200 SXM
dense bf16), and peak CUDA memory; then ratios against TRL (docs/methods.md §9). Run through `scripts/gpu_check.sh`.

Configurations (same model, data and batch):
  trl-dpo-full          TRL's DPOTrainer, full parameters, reference log-probs precomputed (in memory)
  dpo-full              posttrain DPO, plain engine path, reference log-probs from the cache
  dpo-full-chunked      ... with `logps_chunk_size` (completion tokens only, chunk by chunk through the LM head)
  dpo-full-packed       ... chunked and `padding_free: true` (one packed row per micro-batch)
  rpo-full              RPO (sum, eta 0.005, beta 0.01), full parameters, reference from the cache
  rpo-full-live         RPO with a live reference model (precompute off): the cache's step-time and memory saving
  trl-dpo-lora          TRL's DPOTrainer, LoRA r16 all-linear with PEFT's defaults (fp32 adapters, input casts)
  dpo-lora-peft-defaults  posttrain DPO, LoRA with PEFT's defaults (lora_cast_input_dtype true)
  dpo-lora              posttrain DPO, LoRA with posttrain's defaults (no per-layer input casts under autocast)
  dpo-lora-bf16         ... and adapters kept in bf16 (lora_autocast_adapter_dtype false): no casts at all
  rpo-lora              RPO, LoRA r16 all-linear, cached reference

Then (`--batch_search`) the largest batch that fits, for TRL's DPOTrainer and for posttrain's chunked DPO: a
doubling search from `--batch` that stops at the first out-of-memory error (`posttrain.profiling.
largest_fitting_batch`), one step per try, run after the timed configurations so fragmentation cannot touch them.

Every configuration runs `--repeats` times, interleaved; the table gives the fastest run's median step and the
spread across runs. One profiled step per configuration gives the GPU-busy fraction (summed kernel time / step
time) and the kernel count, which tell compute-bound steps from launch-bound ones. Finally the single-GPU LoRA
recipe runs as the README launches it (`accelerate launch --config_file recipes/accelerate/single_gpu.yaml
scripts/train.py --config recipes/rpo/qwen2.5-0.5b-instruct_lora_ultrafeedback.yaml`, on this model and data), and is
launched again with more steps to check that it resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from posttrain.io import read_jsonl  # noqa: E402  (the repo is on sys.path only from here)
from posttrain.profiling import H100_SXM_BF16_DENSE_FLOPS, profiled_step_callback  # noqa: E402

QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                 rms_norm_eps=1e-6, tie_word_embeddings=True)
SMOKE_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, vocab_size=512, max_position_embeddings=1024)
CHUNK = 4096  # completion tokens per LM-head chunk: one [4096 x 32768] bf16 tile is 256 MiB
CONFIGS = {
    "trl-dpo-full": {"method": "dpo", "trainer": "trl"},
    "dpo-full": {"method": "dpo"},
    "dpo-full-chunked": {"method": "dpo", "logps_chunk_size": CHUNK},
    "dpo-full-packed": {"method": "dpo", "logps_chunk_size": CHUNK, "padding_free": True},
    "rpo-full": {"method": "rpo", "rpo_eta": 0.005, "sft_normalization": "sum"},
    "rpo-full-live": {"method": "rpo", "rpo_eta": 0.005, "sft_normalization": "sum",
                      "precompute_ref_log_probs": False},
    "trl-dpo-lora": {"method": "dpo", "use_peft": True, "trainer": "trl"},
    "dpo-lora-peft-defaults": {"method": "dpo", "use_peft": True, "lora_cast_input_dtype": True},
    "dpo-lora": {"method": "dpo", "use_peft": True},
    "dpo-lora-bf16": {"method": "dpo", "use_peft": True, "lora_autocast_adapter_dtype": False},
    "rpo-lora": {"method": "rpo", "rpo_eta": 0.005, "sft_normalization": "sum", "use_peft": True},
}
SEARCHED = ("trl-dpo-full", "dpo-full-chunked")  # the batch search: TRL's trainer against ours at its leanest


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/gpu_check", help="folder for results.json and results.md")
    # 16 pairs x 1024 tokens keeps an H100/H200 about 90% busy at 0.5B; at 8 x 512 the step is host-bound (the GPU
    # is busy 30-55% of it) and whole runs differ by up to a third.
    parser.add_argument("--batch", type=int, default=16, help="preference pairs per step")
    parser.add_argument("--prompt_len", type=int, default=512, help="prompt tokens")
    parser.add_argument("--completion_len", type=int, default=512, help="tokens per chosen/rejected answer")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every configuration, interleaved")
    parser.add_argument("--recipe_check", action=argparse.BooleanOptionalAction, default=True,
                        help="also launch the single-GPU LoRA recipe through accelerate (and resume it)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch_search", action=argparse.BooleanOptionalAction, default=True,
                        help="also find the largest batch that fits, for TRL's DPOTrainer and for ours")
    parser.add_argument("--max_batch", type=int, default=256, help="where the batch search stops doubling")
    parser.add_argument("--peak_tflops", type=float, default=H100_SXM_BF16_DENSE_FLOPS / 1e12,
                        help="denominator of MFU (default: H100 SXM dense bf16)")
    parser.add_argument("--cpu_smoke_test", action="store_true",
                        help="a 2-layer, 64-wide model on CPU in fp32: checks the script itself, measures nothing")
    return parser.parse_args(argv)


def build_model(workdir: Path, smoke: bool) -> tuple[Path, int]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from posttrain.data import tokenizer_corpus
    from posttrain.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(tokenizer_corpus())  # digits are single tokens, so lengths are exact
    tokenizer.model_max_length = 32768
    shape = {**QWEN2_05B, **(SMOKE_SHAPE if smoke else {})}
    config = Qwen2Config(**shape, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device("cpu" if smoke else "cuda"):
        model = Qwen2ForCausalLM(config).to(torch.float32 if smoke else torch.bfloat16)
    path = workdir / "qwen2-0.5b-random"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    parameters = model.num_parameters()
    del model
    return path, parameters


def write_pairs(path: Path, rows: int, prompt_len: int, completion_len: int) -> Path:
    rng = random.Random(0)

    def digits(n):
        return "".join(rng.choice("0123456789") for _ in range(n))

    with path.open("w") as f:
        for _ in range(rows):
            f.write(json.dumps({"prompt": digits(prompt_len), "chosen": digits(completion_len),
                                "rejected": digits(completion_len)}) + "\n")
    return path


def run_config(name: str, model: Path, data: Path, workdir: Path, args) -> dict:
    import torch

    from posttrain.profiling import linear_weights, peak_memory_mib, step_flops, step_timer
    from posttrain.recipe import load_recipe
    from posttrain.train import build_trainer

    recipe_values = {
        "model_name_or_path": str(model), "attn_implementation": "sdpa", "dataset_name": str(data),
        "output_dir": str(workdir / name), "beta": 0.01,
        **({"use_cpu": True, "bf16": False} if args.cpu_smoke_test else {"dtype": "bfloat16", "bf16": True}),
        "learning_rate": 5e-6, "lr_scheduler_type": "constant", "warmup_steps": 0,
        "per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1,
        "max_steps": args.warmup + args.steps + 1, "max_length": args.prompt_len + args.completion_len + 8,
        "gradient_checkpointing": False, "save_strategy": "no", "logging_steps": 1, "report_to": "none",
        "disable_tqdm": True, "seed": 0, "dataloader_num_workers": 2,
        "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lora_target_modules": ["all-linear"],
        "ref_logps_cache_dir": str(workdir / "ref_cache"), **CONFIGS[name],
    }
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    if recipe_values.pop("trainer", None) == "trl":
        trainer = trl_trainer(recipe_values)
    else:
        recipe_path = workdir / f"{name}.yaml"
        recipe_path.write_text(yaml.safe_dump(recipe_values))
        trainer = build_trainer(load_recipe(str(recipe_path)))
    timer, profiled = step_timer(), profiled_step_callback(args.warmup + args.steps + 1)
    trainer.add_callback(timer)
    trainer.add_callback(profiled)
    trainer.train()
    total_s = time.perf_counter() - began
    row = trainer.train_dataset[0]
    seq_len = len(row["prompt_ids"]) + len(row["chosen_ids"])
    tokens = args.batch * 2 * seq_len  # fixed lengths: no padding in any batch
    median = timer.median(args.warmup, args.steps)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    flops = step_flops(unwrapped.config, linear_weights(unwrapped), tokens, seq_len,
                       weight_grads=not CONFIGS[name].get("use_peft", False),
                       extra_forwards=0 if CONFIGS[name].get("precompute_ref_log_probs", True) else 1)
    result = {
        "config": name, "median_step_s": round(median, 4), "tokens_per_step": tokens,
        "tokens_per_s": round(tokens / median), "tflops_per_s": round(flops / median / 1e12, 1),
        "mfu": round(flops / median / (args.peak_tflops * 1e12), 4),
        "peak_memory_gib": round(peak_memory_mib("cpu" if args.cpu_smoke_test else "cuda") / 1024, 2),
        "wall_s_incl_setup": round(total_s, 1),
        "trainable_params": sum(p.numel() for p in unwrapped.parameters() if p.requires_grad),
        "reference_model_loaded": trainer.ref_model is not None,
        "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        **{k: v for k, v in profiled.summary.items() if k != "compute_op_counts"},
    }
    del trainer, unwrapped
    gc.collect()
    return result


def trl_trainer(values: dict):
    """`trl.DPOTrainer` on the settings of `values` that TRL's DPOConfig and ModelConfig know; reference log-probs
    precomputed (TRL keeps them in memory), LoRA through PEFT's defaults, as a TRL user would run it."""
    import dataclasses

    import trl
    from datasets import load_dataset

    from posttrain.models import load_causal_lm, load_tokenizer

    def known(cls):
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return {k: v for k, v in values.items() if k in names}

    model_args = trl.ModelConfig(**known(trl.ModelConfig))
    config = trl.DPOConfig(**{**known(trl.DPOConfig), "precompute_ref_log_probs": True})
    model = load_causal_lm(model_args.model_name_or_path, dtype=model_args.dtype,
                           attn_implementation=model_args.attn_implementation)
    return trl.DPOTrainer(model=model, args=config, processing_class=load_tokenizer(model_args.model_name_or_path),
                          train_dataset=load_dataset("json", data_files=values["dataset_name"], split="train"),
                          peft_config=trl.get_peft_config(model_args))


def batch_search(name: str, model: Path, workdir: Path, args) -> dict:
    """The largest batch (pairs) `name` trains at without running out of memory, one step per try."""
    from posttrain.profiling import largest_fitting_batch

    def try_batch(batch: int) -> dict:
        data = write_pairs(workdir / f"pairs-{batch}.jsonl", batch * 2, args.prompt_len, args.completion_len)
        tried = argparse.Namespace(**{**vars(args), "batch": batch, "warmup": 0, "steps": 1})
        result = run_config(name, model, data, workdir, tried)
        print(f"gpu_check: batch search {name} {batch}: fits, peak {result['peak_memory_gib']} GiB", flush=True)
        return {k: result[k] for k in ("median_step_s", "tokens_per_s", "mfu", "peak_memory_gib")}

    return largest_fitting_batch(try_batch, args.batch, args.max_batch)


def aggregate(runs: list[dict]) -> dict:
    """One row per configuration: its fastest run (timeit's convention: interference only adds time), with the
    spread across runs and the highest peak memory."""
    steps = [r["median_step_s"] for r in runs]
    fastest = min(runs, key=lambda r: r["median_step_s"])
    return {**fastest, "runs": len(runs), "spread": round((max(steps) - min(steps)) / min(steps), 3),
            "peak_memory_gib": max(r["peak_memory_gib"] for r in runs)}


def recipe_check(model: Path, data: Path, workdir: Path, smoke: bool) -> dict:
    """The README's single-GPU LoRA command on this model and data: 6 steps, then relaunched to 8 (must resume).
    The CPU smoke test runs it with one CPU process, fp32 and small batches."""
    import subprocess

    accelerate_config, overrides = "single_gpu.yaml", []
    if smoke:
        accelerate_config = "cpu_ddp.yaml"
        overrides = ["--use_cpu", "true", "--bf16", "false", "--dtype", "float32", "--gradient_checkpointing", "false",
                     "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_length", "64"]
    run_dir = workdir / "recipe-run"
    base = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "recipes" / "accelerate" / accelerate_config), "--num_processes", "1",
            str(REPO / "scripts" / "train.py"),
            "--config", str(REPO / "recipes" / "rpo" / "qwen2.5-0.5b-instruct_lora_ultrafeedback.yaml"),
            "--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(run_dir),
            "--logging_steps", "1", "--save_steps", "3", "--report_to", "none", *overrides]
    result = {}
    for steps in (6, 8):
        began = time.perf_counter()
        proc = subprocess.run([*base, "--max_steps", str(steps)], capture_output=True, text=True, cwd=REPO)
        result[f"launch_{steps}_steps"] = {"exit_code": proc.returncode, "resumed": "resuming from" in proc.stdout,
                                           "wall_s": round(time.perf_counter() - began, 1)}
        if proc.returncode:
            result["error_tail"] = (proc.stdout + proc.stderr)[-3000:]
            return result
    result["adapter_saved"] = (run_dir / "adapter_model.safetensors").is_file()
    result["losses"] = [row["loss"] for row in read_jsonl(run_dir / "metrics.jsonl") if "loss" in row]
    return result


RATIOS = (  # (label, ours, baseline): step-time and peak-memory ratios printed under the table
    ("ours / TRL, full", ("dpo-full", "dpo-full-chunked", "dpo-full-packed"), "trl-dpo-full"),
    ("ours / TRL, LoRA", ("dpo-lora", "dpo-lora-bf16", "dpo-lora-peft-defaults"), "trl-dpo-lora"),
    ("LoRA / full", ("dpo-lora", "dpo-lora-bf16", "dpo-lora-peft-defaults"), "dpo-full"),
    ("LoRA / full, TRL", ("trl-dpo-lora",), "trl-dpo-full"),
    ("RPO cached / live reference", ("rpo-full",), "rpo-full-live"),
)


def comparisons(by_name: dict, searched: dict | None) -> list[str]:
    """The ratios against TRL and full fine-tuning, the issue's two GPU targets, and the batch search."""
    lines = ["", "| comparison | step time | peak memory |", "|---|---|---|"]
    for label, ours, baseline in RATIOS:
        for name in (n for n in ours if n in by_name and baseline in by_name):
            a, b = by_name[name], by_name[baseline]
            lines.append(f"| {label}: {name} / {baseline} | {a['median_step_s'] / b['median_step_s']:.3f} | "
                         f"{a['peak_memory_gib'] / b['peak_memory_gib']:.3f} |")
    full = [by_name[n] for n in ("dpo-full", "dpo-full-chunked", "dpo-full-packed") if n in by_name]
    if full and "trl-dpo-full" in by_name:
        best_mfu, leanest = max(full, key=lambda r: r["mfu"]), min(full, key=lambda r: r["peak_memory_gib"])
        memory = leanest["peak_memory_gib"] / by_name["trl-dpo-full"]["peak_memory_gib"]
        lines += ["", f"Targets: MFU >= 45%: {best_mfu['config']} {best_mfu['mfu']:.1%} "
                      f"({'met' if best_mfu['mfu'] >= 0.45 else 'not met'}); peak memory <= 0.5x TRL's at the same "
                      f"batch: {leanest['config']} {memory:.3f}x ({'met' if memory <= 0.5 else 'not met'})."]
    for name, found in (searched or {}).items():
        tried = ", ".join(f"{n}: {r if isinstance(r, str) else str(r['peak_memory_gib']) + ' GiB'}"
                          for n, r in found["tried"].items())
        lines.append(f"Largest batch that fits, {name}: {found['largest']} pairs ({tried}).")
    return lines


def markdown(results: list[dict], setup: dict, recipe: dict | None = None, searched: dict | None = None) -> str:
    lines = [f"# GPU check: {setup['gpu']}", "",
             f"Qwen2-0.5B-shaped model ({setup['parameters'] / 1e6:.0f}M parameters, random init, bf16, sdpa), "
             f"{setup['batch']} pairs x ({setup['prompt_len']} prompt + {setup['completion_len']} answer) tokens "
             f"per step, median of {setup['steps']} steps after {setup['warmup']} warm-up, {setup['repeats']} "
             f"interleaved run(s) per configuration, fastest shown. MFU against {setup['peak_tflops']:.0f} "
             "TFLOP/s.", "",
             "| config | step s | spread | tokens/s | TFLOP/s | MFU | GPU busy | kernels (CPU: ops)/step | peak GiB | "
             "trainable "
             "| ref model | loss |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        busy = f"{r['gpu_busy_fraction']:.0%}" if "gpu_busy_fraction" in r else "-"
        lines.append(f"| {r['config']} | {r['median_step_s']:.4f} | {r['spread']:.1%} | {r['tokens_per_s']:,} | "
                     f"{r['tflops_per_s']} | {r['mfu']:.1%} | {busy} | {r.get('kernels', r.get('compute_ops', '-'))} | "
                     f"{r['peak_memory_gib']} | {r['trainable_params'] / 1e6:.1f}M | {r['reference_model_loaded']} | "
                     f"{r['final_loss']:.4f} |")
    lines += comparisons({r["config"]: r for r in results}, searched)
    if recipe:
        lines += ["", f"Single-GPU LoRA recipe through accelerate launch: {json.dumps(recipe)}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    import tempfile

    import torch

    args = parse_args(argv)
    if not (torch.cuda.is_available() or args.cpu_smoke_test):
        print("gpu_check: no CUDA GPU is visible to torch; nothing to measure", file=sys.stderr)
        sys.exit(2)
    from posttrain.io import atomic_write_json, atomic_write_text

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {name: [] for name in args.configs}
    gpu = "CPU smoke test (not a measurement)" if args.cpu_smoke_test else torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        workdir = Path(tmp)
        began = time.perf_counter()
        model, parameters = build_model(workdir, args.cpu_smoke_test)
        data = write_pairs(workdir / "pairs.jsonl", args.batch * (args.warmup + args.steps + 1), args.prompt_len,
                           args.completion_len)
        print(f"gpu_check: model and data ready in {time.perf_counter() - began:.1f}s", flush=True)
        setup = {"gpu": gpu, "parameters": parameters, "torch": torch.__version__,
                 **{k: getattr(args, k) for k in ("batch", "prompt_len", "completion_len", "warmup", "steps",
                                                   "repeats", "peak_tflops")}}

        searched: dict[str, dict] = {}

        def write(recipe=None):
            results = [aggregate(r) for r in runs.values() if r]
            atomic_write_json(output / "results.json", {"setup": setup, "results": results, "runs": runs,
                                                        "batch_search": searched, "recipe_check": recipe})
            atomic_write_text(output / "results.md", markdown(results, setup, recipe, searched))
            return results

        for _ in range(args.repeats):
            for name in args.configs:
                runs[name].append(run_config(name, model, data, workdir, args))
                print("gpu_check: " + json.dumps(runs[name][-1]), flush=True)
                write()
        for name in SEARCHED if args.batch_search else ():
            searched[name] = batch_search(name, model, workdir, args)
            write()
        recipe = recipe_check(model, data, workdir, args.cpu_smoke_test) if args.recipe_check else None
        results = write(recipe)
    print(markdown(results, setup, recipe, searched))
    return results


if __name__ == "__main__":
    main()
