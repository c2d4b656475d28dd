"""Packed batches and chunked log-probs under 2-process DeepSpeed ZeRO-3 on CPU (docs/methods.md §9): the step-1
loss equals the padded, plain-head run's. RPO, whose SFT term reads the per-token log-probs as well as the sums."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.io import read_jsonl

from .launching import REPO, TRAIN, launch

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", tokenizer_corpus())


def _step1_loss(model: Path, output_dir: Path, cache: Path, *extra: str) -> float:
    launch(TRAIN, "--config", str(REPO / "recipes" / "rpo" / "sort8_tiny_cpu.yaml"), "--model_name_or_path",
           str(model), "--output_dir", str(output_dir), "--max_steps", "1", "--save_steps", "1",
           "--logging_steps", "1", "--dataset_num_examples", "64", "--per_device_train_batch_size", "8",
           "--eval_task", "", "--build_tiny_model_if_missing", "false", *extra, env={"POSTTRAIN_CACHE": str(cache)})
    return next(row["loss"] for row in read_jsonl(output_dir / "metrics.jsonl") if "loss" in row)


def test_zero3_packed_and_chunked_step1_loss_equals_padded(tiny_model, tmp_path):
    padded = _step1_loss(tiny_model, tmp_path / "padded", tmp_path / "cache")
    packed = _step1_loss(tiny_model, tmp_path / "packed", tmp_path / "cache", "--padding_free", "true",
                         "--logps_chunk_size", "16")
    assert packed == pytest.approx(padded, abs=1e-5)
