"""The report's plots keep the figure title clear of the panel titles, and its run-setup facts."""

from __future__ import annotations

import pytest
from trl import DPOConfig, ModelConfig

from posttrain.evaluation import report
from posttrain.resume import Topology


def _title_overlaps(fig) -> list[str]:
    """Panel titles whose drawn box meets the figure title's."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    suptitle = fig._suptitle.get_window_extent(renderer)
    return [ax.get_title() for ax in fig.axes
            if ax.get_title() and ax.title.get_window_extent(renderer).overlaps(suptitle)]


@pytest.mark.parametrize("panels", [1, 3, 5])
def test_figure_title_does_not_overlap_panel_titles(panels, tmp_path, monkeypatch):
    overlaps = []
    save = report.save_figure
    monkeypatch.setattr(report, "save_figure", lambda fig, path: (overlaps.extend(_title_overlaps(fig)),
                                                                  save(fig, path)))
    series = {f"metric_{i}": [(1, 1.0), (2, 0.5)] for i in range(panels)}
    assert report.plot_series(series, list(series), tmp_path / "metrics.png", "key metrics")
    assert (tmp_path / "metrics.png").exists() and overlaps == []


def _training(**values):
    return DPOConfig(output_dir="unused", use_cpu=True, report_to="none", **{"bf16": False, **values})


def test_run_setup_of_a_full_fp32_run():
    setup = report.run_setup(ModelConfig(), _training(), Topology(1, 0))
    assert setup == {"fine-tuning": "full (every weight trained)", "precision": "fp32; weights loaded as float32",
                     "topology": "1 process with no DeepSpeed"}


def test_run_setup_names_lora_rank_alpha_targets_quantisation_and_zero_stage():
    model = ModelConfig(use_peft=True, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                        lora_target_modules=["q_proj", "v_proj"], load_in_4bit=True, dtype="bfloat16")
    setup = report.run_setup(model, _training(bf16=True), Topology(4, 3))
    assert setup["fine-tuning"] == "LoRA adapter: rank 8, alpha 16, dropout 0.0, target modules q_proj, v_proj"
    assert setup["precision"] == "bf16 mixed precision; base weights quantised to 4-bit (nf4, QLoRA)"
    assert setup["topology"] == "4 processes with DeepSpeed ZeRO-3"


def test_report_shows_the_run_setup_block(tmp_path):
    setup = {"fine-tuning": "LoRA adapter: rank 4", "precision": "fp32", "topology": "1 process with no DeepSpeed"}
    text = report.write_report(tmp_path, "title", {"method": "sft"}, setup=setup).read_text()
    assert "## Run setup" in text and "| fine-tuning | LoRA adapter: rank 4 |" in text
    assert "| topology | 1 process with no DeepSpeed |" in text
