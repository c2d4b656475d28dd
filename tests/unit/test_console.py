"""The quiet console: compact metric lines, the final summary, and libraries silenced only while a run is on."""

from __future__ import annotations

import logging

import datasets
import transformers.utils.logging as hf_logging

from posttrain.console import metric_line, quiet_libraries, summary_lines, use_console


def test_metric_line_puts_loss_and_the_methods_metrics_first_and_hides_bookkeeping():
    logs = {"grad_norm": 3.5391, "learning_rate": 0.0007939, "entropy": 5.731, "rewards/margins": 0.01375,
            "loss": 4.9812, "num_tokens": 5632.0, "epoch": 0.2222}
    assert metric_line(4, 10, logs, ("rewards/margins",)) == (
        "step 4/10  loss 4.981  rewards/margins 0.01375  lr 7.9e-04  grad_norm 3.539  entropy 5.731")


def test_summary_names_steps_loss_accuracy_win_rate_and_run_folder():
    evaluation = {"task": "sort8", "n": 20, "accuracy": 0.55, "baseline_accuracy": 0.5,
                  "vs_baseline": {"win_rate": 57.5, "standard_error": 4.25}}
    assert summary_lines("runs/x", 10, {"train_runtime": 0.79, "train_loss": 4.4331}, evaluation) == [
        "posttrain: trained 10 steps in 0.8 s, train loss 4.433",
        "posttrain: eval sort8: accuracy 0.550 on 20 held-out prompts; baseline accuracy 0.500, "
        "win rate vs baseline 57.5 ± 4.2",
        "posttrain: run folder runs/x (report.md)"]


def test_quiet_libraries_silences_deepspeed_and_hf_then_restores_them(capsys):
    deepspeed_logger = logging.getLogger("DeepSpeed")
    handler = logging.StreamHandler()
    deepspeed_logger.addHandler(handler)
    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled())
    try:
        with quiet_libraries():
            # DeepSpeed resets its logger's level when imported, so the level alone would not hold.
            deepspeed_logger.setLevel(logging.WARNING)
            deepspeed_logger.warning("Setting accelerator to CPU.")
            assert hf_logging.get_verbosity() == logging.ERROR and not hf_logging.is_progress_bar_enabled()
            assert not datasets.is_progress_bar_enabled()
        assert "Setting accelerator" not in capsys.readouterr().err
        deepspeed_logger.warning("shown again")
        assert "shown again" in capsys.readouterr().err
    finally:
        deepspeed_logger.removeHandler(handler)
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(),
            datasets.is_progress_bar_enabled()) == before


def test_verbose_keeps_the_trainers_own_progress_callback():
    from transformers.trainer_callback import ProgressCallback

    class Trainer:
        def __init__(self):
            self.callbacks = [ProgressCallback()]

        def remove_callback(self, kind):
            self.callbacks = [c for c in self.callbacks if not isinstance(c, kind)]

        def add_callback(self, callback):
            self.callbacks.append(callback)

    verbose, quiet = Trainer(), Trainer()
    use_console(verbose, verbose=True)
    use_console(quiet)
    assert [type(c).__name__ for c in verbose.callbacks] == ["ProgressCallback"]
    assert [type(c).__name__ for c in quiet.callbacks] == ["ConsoleCallback"]


def test_metric_line_keeps_the_first_values_and_counts_the_rest():
    """GRPO-based methods log some 25 values a step: the line shows the first MAX_LINE_METRICS in priority order."""
    from posttrain.console import MAX_LINE_METRICS

    logs = {"loss": 1.0, **{f"extra/{i}": float(i) for i in range(20)}, "dypo/hard_share": 0.25}
    line = metric_line(2, 4, logs, ("dypo/hard_share",))
    assert line.startswith("step 2/4  loss 1  dypo/hard_share 0.25  extra/0 0  ")
    assert line.count("extra/") == MAX_LINE_METRICS - 2
    assert line.endswith(f"(+{len(logs) - MAX_LINE_METRICS} more in metrics.jsonl)")
