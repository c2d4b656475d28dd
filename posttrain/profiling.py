"""Step timing, peak memory and model-FLOPs utilisation for the benchmarks and the GPU check.

FLOPs follow the usual dense-transformer count (Kaplan et al. 2020; PaLM appendix B): a forward pass costs
2 FLOPs per linear weight per token plus 4 * layers * sequence * attention width for the attention scores and
values. Training with weight gradients costs 3x the forward; with frozen base weights (LoRA) the backward still
propagates activation gradients through them, so about 2x the forward.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections import Counter

H100_SXM_BF16_DENSE_FLOPS = 989e12  # NVIDIA's spec sheet, dense (no sparsity)


def step_timer():
    """A TrainerCallback that records each optimizer step's wall time, synchronising CUDA at both ends, and its CPU
    time (this process, all threads): on a shared CPU machine the CPU time is what the step itself cost, while the
    wall time also counts waiting for cores that other processes hold."""
    import torch
    from transformers import TrainerCallback

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.durations: list[float] = []
            self.cpu_durations: list[float] = []
            self._began = self._began_cpu = 0.0

        def on_step_begin(self, *args, **kwargs):
            sync()
            self._began, self._began_cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, *args, **kwargs):
            sync()
            self.durations.append(time.perf_counter() - self._began)
            self.cpu_durations.append(time.process_time() - self._began_cpu)

        def median(self, skip: int, count: int | None = None, cpu: bool = False) -> float:
            """Median wall (or `cpu`) time of `count` steps (all the rest when None) after the first `skip`."""
            timed = (self.cpu_durations if cpu else self.durations)[skip:None if count is None else skip + count]
            if not timed:
                raise ValueError(f"only {len(self.durations)} steps ran; nothing left to time after {skip} warm-up")
            return statistics.median(timed)

    return StepTimer()


def peak_memory_mib(device: str) -> float:
    """Peak CUDA memory allocated by this process, or its max resident set size on CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


RESULT_PREFIX = "BENCH "  # a worker process prints its result as one line: BENCH <json>


def run_workers_interleaved(script: str, configs, repeats: int, worker_args: list[str]) -> dict[str, list[dict]]:
    """Run `script --worker <config> <worker_args>` in a fresh process per configuration, `repeats` rounds with the
    configurations interleaved (so a slow phase of a shared machine hits them alike); each worker prints its
    result as `RESULT_PREFIX + json`. Returns {config: [result per round]}."""
    results: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name in configs:
            out = subprocess.run([sys.executable, script, "--worker", name, *worker_args], capture_output=True,
                                 text=True, check=True).stdout
            results[name].append(json.loads(out.split(RESULT_PREFIX, 1)[1].splitlines()[0]))
    return results


def linear_weights(model) -> int:
    """Weights that take part in a matmul per token: every nn.Linear (the LM head too, even when tied)."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def forward_flops_per_token(linear_params: int, num_layers: int, seq_len: int, attention_width: int) -> float:
    return 2.0 * linear_params + 4.0 * num_layers * seq_len * attention_width


def step_flops(model_config, linear_params: int, tokens: int, seq_len: int, weight_grads: bool = True,
               extra_forwards: int = 0) -> float:
    """FLOPs one optimizer step needs: `tokens` trained through forward + backward (3x forward with weight
    gradients, 2x without), plus `extra_forwards` no-grad passes over the same tokens (e.g. a live reference)."""
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    forward = forward_flops_per_token(linear_params, model_config.num_hidden_layers, seq_len,
                                      model_config.num_attention_heads * head_dim)
    return tokens * forward * ((3 if weight_grads else 2) + extra_forwards)


NON_KERNEL_OPS = frozenset((  # aten operators that only allocate, view or relabel a tensor
    "as_strided", "resolve_conj", "resolve_neg", "empty", "empty_strided", "empty_like", "view", "_unsafe_view",
    "t", "transpose", "expand", "reshape", "_reshape_alias", "unsqueeze", "squeeze", "detach", "alias", "slice",
    "select", "permute", "lift_fresh", "split", "chunk", "unbind", "narrow", "numpy_T", "set_", "result_type"))


def _walk(nodes):
    for node in nodes:
        yield node
        yield from _walk(node.children)


def summarize_profile(profiler, wall_s: float) -> dict:
    """One profiled step: operator and kernel counts, GPU-busy fraction, and (with `profile_memory`) the peak growth
    of CPU tensor memory, read from the allocator's running total that the profiler records at every allocation."""
    import torch
    from torch._C._profiler import _EventType

    events = profiler.events()
    ops = [e for e in events if e.name.startswith("aten::") and e.device_type == torch.autograd.DeviceType.CPU]
    # Operators that compute (not views, allocations or metadata) and call no other computing operator are the
    # ones that launch kernels on a GPU, so their count is a device-agnostic measure of per-step launch overhead.
    def computes(event) -> bool:
        return event.name.startswith("aten::") and event.name[6:] not in NON_KERNEL_OPS

    leaves = Counter(e.name for e in ops if computes(e) and not any(computes(c) for c in e.cpu_children))
    summary = {"profiled_step_s": round(wall_s, 4), "aten_ops": len(ops), "compute_ops": sum(leaves.values()),
               "compute_op_counts": dict(leaves.most_common())}
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    if kernels:
        busy = sum(e.device_time for e in kernels) / 1e6
        summary.update(kernels=len(kernels), gpu_busy_s=round(busy, 4), gpu_busy_fraction=round(busy / wall_s, 3))
    totals = [n.extra_fields.total_allocated for n in _walk(profiler.profiler.kineto_results.experimental_event_tree())
              if n.tag == _EventType.Allocation and n.extra_fields.device.type == "cpu"]
    if totals:
        summary["cpu_step_peak_mib"] = round(max(totals) / 2**20, 1)
    return summary


def profiled_step_callback(step: int, memory: bool = False):
    """A TrainerCallback that profiles optimizer step `step` (1-based) and leaves `summarize_profile`'s dict in
    `.summary`. With `memory`, CPU allocations are recorded too: `cpu_step_peak_mib` is then the most tensor memory
    the step held above what was live when it began (the weights and optimizer state), which max RSS cannot isolate
    and tracemalloc cannot see."""
    import torch
    from transformers import TrainerCallback

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    class ProfileOneStep(TrainerCallback):
        def __init__(self):
            self.summary: dict = {}
            self.profiler = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == step:
                self.profiler = torch.profiler.profile(activities=activities, profile_memory=memory)
                self.profiler.__enter__()
                self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profiler is None or self.summary:
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.began
            self.profiler.__exit__(None, None, None)
            try:
                self.summary = summarize_profile(self.profiler, wall)
            except Exception as err:  # a profiler API difference must not cost the measurement
                self.summary = {"profile_error": f"{type(err).__name__}: {err}"}

    return ProfileOneStep()


def largest_fitting_batch(try_batch, start: int, limit: int) -> dict:
    """Doubling search for the largest batch that fits in memory: `try_batch(n)` trains at batch `n` and returns its
    result, or raises an out-of-memory error (recognised by accelerate's `should_reduce_batch_size`; anything else
    propagates). Starts at `start`, doubles up to `limit`. Returns {"largest": n or None, "tried": {n: result or
    "out of memory"}}; between tries memory is released as accelerate's own batch-size finder does."""
    from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

    tried, largest, batch = {}, None, start
    while batch <= limit:
        try:
            tried[batch] = try_batch(batch)
        except Exception as err:  # out-of-memory errors end the search; any other error propagates
            if not should_reduce_batch_size(err):
                raise
            tried[batch] = "out of memory"
            break
        finally:
            clear_device_cache(garbage_collection=True)
        largest, batch = batch, batch * 2
    return {"largest": largest, "tried": tried}


def report_summary(summary: dict, output: str | None) -> None:
    """Print a benchmark's summary as JSON and, with `output`, also write it there atomically."""
    from pathlib import Path

    from posttrain.io import atomic_write_text

    text = json.dumps(summary, indent=2)
    print(text)
    if output:
        atomic_write_text(Path(output), text + "\n")


def timed_train(trainer, cuda: bool, warmup: int) -> dict:
    """Run `trainer.train()` once: the median step time after `warmup` steps and the peak memory (CUDA max allocated,
    else the process's max RSS)."""
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    peak = peak_memory_mib("cuda" if cuda else "cpu")
    return {"median_step_s": timer.median(warmup), "peak_memory_mib": round(peak, 1),
            "memory_kind": "cuda max allocated" if cuda else "max RSS"}
