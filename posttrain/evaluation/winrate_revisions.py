"""Win rate by revision (docs/methods.md §2 and §6.1): every revision_<k>.json that `posttrain generate --revisions N`
wrote is judged against the same reference, with the judges, reference outputs and caches of `posttrain eval
winrate` (`posttrain eval winrate --revisions_dir DIR ...`).

Into --output_dir: revision_<k>/ (that revision's outputs, annotations, cache and leaderboard, as a plain win-rate
run writes them), the reference's generation cache, and winrate_by_revision.json, .md (a table) and .png (win rate
against revision). When the revisions came from a posttrain run folder (revisions.json names it), the table and the
plot are also added to that run's report.md. Judging resumes from the annotation caches after a kill.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from posttrain.errors import UsageError
from posttrain.evaluation.report import save_figure
from posttrain.generation.revisions import MANIFEST_FILE, revision_file
from posttrain.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

SUMMARY_FILE, TABLE_FILE, PLOT_FILE = "winrate_by_revision.json", "winrate_by_revision.md", "winrate_by_revision.png"
SECTION = "## Win rate by revision"
RUN_MARKER = "run_config.json"  # posttrain.runs.CONFIG_FILE: what makes a folder a posttrain run


def revision_outputs(directory: str) -> tuple[list[tuple[int, Path]], dict]:
    """[(k, revision_<k>.json)] in revision order, and the folder's revisions.json ({} without one). With a
    manifest every revision it names must be there; without one, whatever revision files the folder holds."""
    folder = Path(directory).expanduser()
    if not folder.is_dir():
        raise UsageError(f"--revisions_dir {directory!r} is not a folder; pass the --output_dir of posttrain generate")
    manifest = read_json(folder / MANIFEST_FILE) if (folder / MANIFEST_FILE).is_file() else {}
    if "revisions" in manifest:
        files = [(k, revision_file(folder, k)) for k in range(int(manifest["revisions"]) + 1)]
        missing = [path.name for _, path in files if not path.is_file()]
        if missing:
            raise UsageError(f"--revisions_dir {directory!r} lacks {', '.join(missing)}: its posttrain generate run "
                             "has not finished; rerun that command to complete it")
        return files, manifest
    found = sorted((int(match.group(1)), path) for path in folder.glob("revision_*.json")
                   if (match := re.fullmatch(r"revision_(\d+)\.json", path.name)))
    if not found:
        raise UsageError(f"--revisions_dir {directory!r} holds no revision_<k>.json; write them with posttrain "
                         f"generate --revisions N --output_dir {directory}")
    return found, manifest


def winrate_by_revision(args) -> dict:
    """Judge each revision against the reference; write the summary, table and plot (and the run's report)."""
    from posttrain.evaluation import winrate_cli as wr

    if args.model is not None or args.model_outputs is not None:
        raise UsageError("--revisions_dir supplies the model outputs (its revision_<k>.json files); drop --model "
                         "and --model_outputs")
    files, manifest = revision_outputs(args.revisions_dir)
    pool, judge_pool, judge = wr.pools_and_judge(args)
    try:
        rows = wr.instruction_rows(argparse.Namespace(**{**vars(args), "model_outputs": str(files[0][1])}))
        wr.check_gold_answers(judge, rows, args.judge)
        plans = [(k, wr.plan_outputs(rows, None, str(path), "model", args)) for k, path in files]
        reference = wr.plan_outputs(rows, args.reference, args.reference_outputs, "reference", args)
        for _, plan in plans:
            wr.check_judge_fits(judge, rows, plan, reference)
        references = wr.produce(reference, rows, args, pool)
        model_name = args.name or plans[0][1].name
        reference_name = args.reference_name or reference.name
        output_dir = Path(args.output_dir)
        results = [{"revision": k, **wr.judge_outputs(judge, judge_pool.backend, rows, plan.texts, references,
                                                      (f"{model_name} (revision {k})", reference_name),
                                                      output_dir / f"revision_{k}", args)}
                   for k, plan in plans]
    finally:
        pool.close()
        judge_pool.close()
    summary = {"model": model_name, "reference": reference_name, "judge": args.judge, "n_instructions": len(rows),
               "revisions": results}
    write_summary(output_dir, summary, run_folder(manifest))
    return summary


def run_folder(manifest: dict) -> Path | None:
    """The posttrain run folder the revisions were generated from, if they were."""
    model = manifest.get("model")
    folder = Path(model).expanduser() if isinstance(model, str) else None
    return folder if folder is not None and (folder / RUN_MARKER).is_file() else None


def table_lines(summary: dict) -> list[str]:
    """The markdown table: one row per revision."""
    lines = ["| revision | win rate (%) | ± s.e. | wins | losses | draws | failed | n |", "|---" * 8 + "|"]
    for row in summary["revisions"]:
        error = row.get("standard_error")
        lines.append(f"| {row['revision']} | {row['win_rate']:.1f} | {'' if error is None else f'{error:.1f}'} | "
                     f"{row['n_wins']} | {row['n_wins_base']} | {row['n_draws']} | {row['n_failed']} | "
                     f"{row['n_total']} |")
    return lines


def plot_winrate(summary: dict, path: Path) -> None:
    """PNG at `path` of win rate (± standard error) against revision, with the 50% line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["revisions"]
    revisions = [row["revision"] for row in rows]
    errors = [row.get("standard_error") or 0.0 for row in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.5), layout="constrained")
    ax.errorbar(revisions, [row["win_rate"] for row in rows], yerr=errors, marker="o", capsize=3)
    ax.axhline(50, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(revisions)
    ax.set_ylim(0, 100)
    ax.set_xlabel("revision")
    ax.set_ylabel("win rate (%)")
    ax.set_title(f"{summary['model']} vs {summary['reference']} ({summary['judge']})", fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)


def write_summary(output_dir: Path, summary: dict, run_dir: Path | None) -> None:
    """winrate_by_revision.json, .md and .png into `output_dir`; the section and plot into `run_dir`'s report."""
    table = table_lines(summary)
    atomic_write_json(output_dir / SUMMARY_FILE, summary)
    atomic_write_text(output_dir / TABLE_FILE, "\n".join(table) + "\n")
    plot_winrate(summary, output_dir / PLOT_FILE)
    print("\n".join(table))
    if run_dir is not None:
        atomic_write_bytes(run_dir / PLOT_FILE, (output_dir / PLOT_FILE).read_bytes())
        section = [SECTION, "", f"Judge `{summary['judge']}`, reference `{summary['reference']}`, "
                   f"{summary['n_instructions']} instructions (details: {output_dir}).", "", *table, "",
                   f"![win rate by revision]({PLOT_FILE})"]
        add_report_section(run_dir / "report.md", "\n".join(section))
        print(f"win rate by revision added to {run_dir / 'report.md'}")


def add_report_section(report: Path, section: str) -> None:
    """Put `section` (which starts with its `## ` heading) into `report`, replacing an earlier copy of it."""
    text = report.read_text(encoding="utf-8") if report.is_file() else ""
    heading = section.splitlines()[0]
    start = text.find(f"\n{heading}\n") + 1 if f"\n{heading}\n" in text else -1
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + (text[end + 1:] if end >= 0 else "")
    text = text.rstrip("\n")
    atomic_write_text(report, (text + "\n\n" if text else "") + section + "\n")
