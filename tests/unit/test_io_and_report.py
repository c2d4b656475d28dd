"""Atomic writes, torn JSON lines, and the run report built from metrics.jsonl."""

from __future__ import annotations

import pytest

from posttrain.evaluation.report import load_metric_series, write_report
from posttrain.io import append_jsonl, atomic_write_text, read_jsonl


def test_atomic_write_replaces_whole_file_and_cleans_up_on_error(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    import os

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"step": 1, "loss": 2.0})
    with path.open("a") as handle:
        handle.write('{"step": 2, "lo')
    assert list(read_jsonl(path)) == [{"step": 1, "loss": 2.0}]


def test_report_plots_and_keeps_last_value_per_step(tmp_path):
    for step, loss in [(1, 3.0), (2, 2.0), (2, 1.5), (3, 1.0)]:  # step 2 logged twice across a resume
        append_jsonl(tmp_path / "metrics.jsonl", {"step": step, "loss": loss, "rewards/accuracies": 0.5,
                                                  "epoch": 0.1, "note": "x"})
    series = load_metric_series(tmp_path / "metrics.jsonl")
    assert series["loss"] == [(1, 3.0), (2, 1.5), (3, 1.0)]
    assert "note" not in series and "epoch" not in series
    report = write_report(tmp_path, "title", {"method": "dpo"}, ["## Extra\ntext"], ("rewards/accuracies",))
    text = report.read_text()
    assert "![loss](loss.png)" in text and "![metrics](metrics.png)" in text and "## Extra" in text
    assert "| loss | 3 | 1 |" in text
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_report_plots_the_methods_own_metrics_and_loss_parts(tmp_path):
    """A method's declared curves (e.g. a new objective's route share) are plotted; `loss/...` parts join the loss."""
    from posttrain.registry import get_method

    for step in (1, 2):
        append_jsonl(tmp_path / "metrics.jsonl", {"step": step, "loss": 1.0 / step, "loss/sft": 0.5 / step,
                                                  "route/sft_share": 0.1 * step})
    write_report(tmp_path, "title", {}, None, ("loss/sft", "route/sft_share"))
    assert (tmp_path / "metrics.png").exists() and (tmp_path / "loss.png").exists()
    (tmp_path / "metrics.png").unlink()
    write_report(tmp_path, "title", {}, None, ())  # undeclared, so only listed in the final-values table
    assert not (tmp_path / "metrics.png").exists()
    assert "loss/sft" in get_method("rpo").report_metrics and "rewards/margins" in get_method("dpo").report_metrics
