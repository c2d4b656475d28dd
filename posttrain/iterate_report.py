"""The report of `posttrain iterate`: report.json, report.md and one PNG per curve (win rate against pi_0, task
accuracy, mean output length) over the models pi_0..pi_T, with the time of every phase and the share spent
generating. Everything is read back from the stages' completion records, so a resumed loop reports the whole run."""

from __future__ import annotations

from pathlib import Path

from posttrain.generation.loading import resolve_backend
from posttrain.io import atomic_write_json, atomic_write_text
from posttrain.pipeline import completed

PHASES = ("sample", "judge", "pairs", "precompute", "train", "merge", "evaluate")
CURVES = {"win_rate": ("win rate vs pi_0 (%)", "win_rate.png"), "accuracy": ("task accuracy", "accuracy.png"),
          "mean_length_tokens": ("mean greedy output length (tokens)", "length.png")}
POINT_KEYS = ("win_rate", "standard_error", "accuracy", "mean_length_tokens", "mean_length_chars")


def _record(folder: Path) -> dict:
    return completed(folder) or {}


def loop_points(loop) -> list[dict]:
    """One row per model pi_0..pi_T: its evaluation (pi_0's win rate against itself is 50 by definition)."""
    pi0 = _record(loop.pipe.path("pi0")).get("result", {})
    points = [{"model": "pi_0", "iteration": 0, **{k: pi0.get(k) for k in POINT_KEYS}, "win_rate": 50.0,
               "standard_error": None}]
    for t in range(loop.loop.iterations):
        result = _record(loop.pipe.path(f"iter{t}/evaluate")).get("result", {})
        points.append({"model": f"pi_{t + 1}", "iteration": t + 1, **{k: result.get(k) for k in POINT_KEYS}})
    return points


def loop_details(loop) -> list[dict]:
    """Per iteration: what each phase recorded (samples, ranking counts, pairs, training summary) and its seconds."""
    details = []
    for t in range(loop.loop.iterations):
        records = {p: _record(loop.pipe.path(f"iter{t}/{p}")) for p in PHASES}
        details.append({"iteration": t, "results": {p: r.get("result") for p, r in records.items() if r},
                        "seconds": {p: r.get("seconds") for p, r in records.items() if r}})
    return details


def timing(loop, details: list[dict]) -> dict:
    """Seconds per phase (summed over iterations; the run that finished a phase), and the share generating: the
    sample phases, pi_0's and each pi_{t+1}'s greedy outputs and accuracy (LLM judging not counted)."""
    pi0 = _record(loop.pipe.path("pi0"))
    per_phase = {p: round(sum(d["seconds"].get(p) or 0.0 for d in details), 1) for p in PHASES
                 if any(p in d["seconds"] for d in details)}
    total = sum(per_phase.values()) + (pi0.get("seconds") or 0.0)
    generation = (pi0.get("result", {}).get("generation_seconds") or 0.0) + sum(
        (d["results"].get(p) or {}).get("generation_seconds") or 0.0 for d in details for p in ("sample", "evaluate"))
    return {"phase_seconds": per_phase, "pi0_eval_seconds": pi0.get("seconds"), "total_seconds": round(total, 1),
            "generation_seconds": round(generation, 1),
            "generation_share": round(generation / total, 3) if total else None}


def plot_curves(points: list[dict], folder: Path) -> list[str]:
    """One PNG per curve that has values; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posttrain.evaluation.report import save_figure

    written = []
    for key, (title, file) in CURVES.items():
        known = [(p["iteration"], p[key]) for p in points if p.get(key) is not None]
        if not known:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.2), layout="constrained")
        ax.plot(*zip(*known), marker="o")
        ax.set_xlabel("iteration (model pi_t)")
        ax.set_xticks([x for x, _ in known])
        ax.set_title(title)
        ax.grid(alpha=0.3)
        save_figure(fig, folder / file)
        plt.close(fig)
        written.append(file)
    return written


def _cell(value, spec: str = ".3f") -> str:
    return "" if value is None else format(value, spec) if isinstance(value, float) else str(value)


def _markdown(loop, report: dict, figures: list[str]) -> str:
    lines = [f"# posttrain iterate: {report['method']} from {report['pi_0']}", "",
             f"{report['iterations']} iterations; judge `{report['judge']}` ({report['ranking']}), eval judge "
             f"`{report['eval_judge']}`; K = {loop.loop.samples_per_prompt} samples per prompt at temperature "
             f"{loop.loop.sample_temperature}. Win rate: pi_t's greedy outputs against pi_0's on "
             f"{loop.loop.eval_num_prompts} held-out prompts. Length: mean greedy output length in tokens.", "",
             "| model | win rate vs pi_0 | accuracy | mean length (tokens) | mean length (chars) |",
             "|---|---|---|---|---|"]
    for p in report["points"]:
        se = f" ± {p['standard_error']:.1f}" if p.get("standard_error") is not None else ""
        lines.append(f"| {p['model']} | {_cell(p['win_rate'], '.1f')}{se} | {_cell(p['accuracy'])} | "
                     f"{_cell(p['mean_length_tokens'], '.2f')} | {_cell(p['mean_length_chars'], '.1f')} |")
    lines += ["", "| iteration | pairs | judge counts | train steps |", "|---|---|---|---|"]
    for d in report["details"]:
        results = d["results"]
        counts = ", ".join(f"{k} {v}" for k, v in (results.get("judge") or {}).items() if isinstance(v, int | float))
        lines.append(f"| {d['iteration']} | {(results.get('pairs') or {}).get('pairs', '')} | {counts} | "
                     f"{(results.get('train') or {}).get('steps', '')} |")
    time = report["timing"]
    lines += ["", "| phase | seconds (all iterations) |", "|---|---|"]
    lines += [f"| {p} | {s} |" for p, s in time["phase_seconds"].items()]
    lines += [f"| pi_0 eval | {time['pi0_eval_seconds']} |", "",
              f"Generating took {time['generation_seconds']} s of {time['total_seconds']} s "
              f"({_cell(time['generation_share'], '.1%')}; backend {resolve_backend(loop.loop.generation_backend)})."]
    lines += ["", *(f"![{f}]({f})" for f in figures)]
    return "\n".join(lines) + "\n"


def write_loop_report(loop) -> dict:
    """Write `<output_dir>/report.json`, `report.md` and the curves; return the report."""
    details = loop_details(loop)
    report = {"method": loop.recipe.method.name, "pi_0": loop.pi0, "iterations": loop.loop.iterations,
              "judge": loop.loop.judge, "ranking": loop.loop.ranking,
              "eval_judge": loop.loop.eval_judge or loop.loop.judge, "points": loop_points(loop),
              "details": details, "timing": timing(loop, details)}
    figures = plot_curves(report["points"], loop.root)
    atomic_write_json(loop.root / "report.json", report)
    atomic_write_text(loop.root / "report.md", _markdown(loop, report, figures))
    print(f"posttrain: loop report written to {loop.root / 'report.md'}")
    return report
