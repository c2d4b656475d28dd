"""Generation throughput: vLLM against transformers on the same model, prompts and greedy params, in one run.

    python scripts/bench_generation.py                     # the tiny model and a ~26M-parameter Llama, on CPU
    python scripts/bench_generation.py --prompts 512 --max_new_tokens 64 --hidden 768 --layers 12

Per model and backend: startup seconds (model load or vLLM engine start, plus a two-prompt warm-up) and
generated tokens per second of one `generate` call over all prompts, timed separately; then the
vLLM/transformers throughput ratio and the share of prompts whose greedy tokens agree. Models are built from
configs (random init, the tiny tokenizer), so they never emit EOS and every prompt generates exactly
max_new_tokens. Both backends get the same CPU threads (--threads; vLLM's CPU worker is bound to cores
0..threads-1).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=256, help="transformers batch size (its default)")
    parser.add_argument("--hidden", type=int, default=512, help="the larger model's hidden size (head_dim 64)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=["tiny", "larger"], choices=["tiny", "larger"])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--compile", action="store_true", help="let vLLM torch.compile (slower start)")
    parser.add_argument("--output", help="also write the results as JSON here")
    return parser.parse_args(argv)


def build_models(root: Path, args) -> dict[str, Path]:
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    shapes = {"tiny": {}, "larger": {"hidden_size": args.hidden, "num_layers": args.layers,
                                     "num_heads": args.hidden // 64, "intermediate_size": 3 * args.hidden,
                                     "max_position_embeddings": 512}}
    return {name: make_tiny_model(root / name, tokenizer_corpus(), seed=0, **shapes[name]) for name in args.models}


def timed(label: str, start_backend, prompts, params) -> dict:
    """Start a backend (and warm it up on two prompts), then time one generate call over all prompts."""
    from posttrain.generation import SamplingParams

    start = time.perf_counter()
    generator = start_backend()
    generator.generate(prompts[:2], SamplingParams(max_new_tokens=2))
    startup = time.perf_counter() - start
    start = time.perf_counter()
    results = generator.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for row in results for c in row)
    if hasattr(generator, "close"):
        generator.close()
    print(f"  {label:<13} startup {startup:6.1f} s   {tokens} tokens in {seconds:6.2f} s = "
          f"{tokens / seconds:8.1f} tokens/s", flush=True)
    return {"startup_s": startup, "generate_s": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "token_ids": [row[0].token_ids for row in results]}


def bench_model(name: str, path: Path, prompts, args) -> dict:
    import torch

    from posttrain.generation import SamplingParams, VLLMGenerator, load_generator

    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    parameters = sum(p.numel() for p in load_generator(str(path), "transformers").model.parameters())
    print(f"{name}: {parameters / 1e6:.2f}M parameters, {len(prompts)} prompts x {args.max_new_tokens} new tokens",
          flush=True)
    torch.set_num_threads(args.threads)
    hf = timed("transformers", lambda: load_generator(str(path), "transformers", batch_size=args.batch_size),
               prompts, params)
    vllm = timed("vllm", lambda: VLLMGenerator(str(path), max_model_len=256, enforce_eager=not args.compile,
                                               show_progress=False), prompts, params)
    agree = sum(a == b for a, b in zip(hf.pop("token_ids"), vllm.pop("token_ids"))) / len(prompts)
    ratio = vllm["tokens_per_s"] / hf["tokens_per_s"]
    print(f"  vLLM / transformers throughput: {ratio:.2f}x; greedy tokens agree on {agree:.0%} of prompts\n",
          flush=True)
    return {"model": name, "parameters": parameters, "transformers": hf, "vllm": vllm, "throughput_ratio": ratio,
            "greedy_agreement": agree}


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")
    from posttrain.data import proving_ground_rows
    from posttrain.io import atomic_write_json

    prompts = [row["prompt"] for row in proving_ground_rows("sort8/sft", n=args.prompts, seed=1)]
    print(f"threads: {args.threads} (transformers torch threads; vLLM OMP bind "
          f"{os.environ['VLLM_CPU_OMP_THREADS_BIND']})\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_model(name, path, prompts, args) for name, path in build_models(Path(tmp), args).items()]
    for r in results:
        print(f"{r['model']:<7} {r['parameters'] / 1e6:6.2f}M  transformers {r['transformers']['tokens_per_s']:8.1f} "
              f"tok/s (start {r['transformers']['startup_s']:.1f} s)  vllm {r['vllm']['tokens_per_s']:8.1f} tok/s "
              f"(start {r['vllm']['startup_s']:.1f} s)  ratio {r['throughput_ratio']:.2f}x")
    if args.output:
        atomic_write_json(args.output, {"args": vars(args), "results": results})
    return results


if __name__ == "__main__":
    main()
