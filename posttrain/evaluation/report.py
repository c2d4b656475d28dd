"""Run reports: `report.md` with PNG plots of the loss and the method's key metrics (matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path

from posttrain.io import atomic_write_bytes, atomic_write_text, read_jsonl

# Plotted after a method's own metrics (`Method.report_metrics`) when present; loss parts (`loss/...`) go with the
# loss. Anything else numeric is listed in the final-values table.
COMMON_METRICS = ("mean_token_accuracy", "entropy", "grad_norm", "learning_rate")
_SKIP = {"step", "epoch", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second"}


def load_metric_series(metrics_path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Per metric, (step, value) pairs; a step logged twice (after a resume) keeps its last value."""
    by_step: dict[str, dict[int, float]] = {}
    for record in read_jsonl(metrics_path):
        step = int(record.get("step", 0))
        for key, value in record.items():
            if key in _SKIP or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            if math.isfinite(value):
                by_step.setdefault(key, {})[step] = float(value)
    return {key: sorted(points.items()) for key, points in by_step.items()}


def save_figure(fig, path: Path) -> None:
    """`fig` as a PNG at `path`, written atomically."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_series(series: dict[str, list[tuple[int, float]]], keys: list[str], path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if series.get(k)]
    if not keys:
        return False
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    # Constrained layout reserves room for the figure title above the panel titles (they overlapped without it).
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False, layout="constrained")
    for ax, key in zip(axes.flat, keys):
        steps, values = zip(*series[key])
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title)
    save_figure(fig, path)
    plt.close(fig)
    return True


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_setup(model_args, training_args, topology) -> dict[str, str]:
    """How the run trained, from its recipe's `trl.ModelConfig` and training config and its launch's
    `posttrain.resume.Topology`: full or LoRA fine-tuning, numeric precision, processes and DeepSpeed stage."""
    return {"fine-tuning": _fine_tuning(model_args), "precision": _precision(model_args, training_args),
            "topology": topology.describe()}


def _fine_tuning(model_args) -> str:
    if not model_args.use_peft:
        return "full (every weight trained)"
    kind = "DoRA" if model_args.use_dora else "LoRA"
    targets = model_args.lora_target_modules
    targets = ", ".join(targets) if isinstance(targets, list | tuple) else targets or "PEFT's default for the model"
    return (f"{kind} adapter: rank {model_args.lora_r}, alpha {model_args.lora_alpha}"
            f"{' (rsLoRA scaling)' if model_args.use_rslora else ''}, dropout {model_args.lora_dropout}, "
            f"target modules {targets}")


def _precision(model_args, training_args) -> str:
    compute = "bf16 mixed precision" if training_args.bf16 else "fp16 mixed precision" if training_args.fp16 \
        else "fp32"
    weights = f"weights loaded as {model_args.dtype or 'auto'}"
    if model_args.load_in_4bit:
        weights = f"base weights quantised to 4-bit ({model_args.bnb_4bit_quant_type}, QLoRA)"
    elif model_args.load_in_8bit:
        weights = "base weights quantised to 8-bit"
    return f"{compute}; {weights}"


def write_report(run_dir: str | Path, title: str, summary: dict, sections: list[str] | None = None,
                 method_metrics: tuple[str, ...] = (), setup: dict[str, str] | None = None) -> Path:
    """Write `report.md` (and `loss.png`, `metrics.png`) in `run_dir` from its metrics.jsonl; `method_metrics` are
    the method's own curves (its `loss/...` parts are plotted with the loss), `setup` the `run_setup` facts."""
    run_dir = Path(run_dir)
    series = load_metric_series(run_dir / "metrics.jsonl")
    loss_parts = [k for k in method_metrics if k.startswith("loss/")]
    key_metrics = [k for k in dict.fromkeys([*method_metrics, *COMMON_METRICS]) if k not in loss_parts]
    lines = [f"# {title}", "", "| setting | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in summary.items()]
    if setup:
        lines += ["", "## Run setup", "", "| aspect | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in setup.items()]
    loss_keys = [k for k in ("loss", "eval_loss", *loss_parts) if k in series]
    if plot_series(series, loss_keys, run_dir / "loss.png", "loss"):
        lines += ["", "## Loss", "", "![loss](loss.png)"]
    metric_keys = [k for k in key_metrics if k in series] + [f"eval_{k}" for k in key_metrics if f"eval_{k}" in series]
    if plot_series(series, metric_keys, run_dir / "metrics.png", "key metrics"):
        lines += ["", "## Key metrics", "", "![metrics](metrics.png)"]
    if series:
        lines += ["", "## Final values", "", "| metric | step | value |", "|---|---|---|"]
        lines += [f"| {key} | {points[-1][0]} | {_fmt(points[-1][1])} |" for key, points in sorted(series.items())]
    for section in sections or []:
        lines += ["", section]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
