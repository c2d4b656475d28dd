"""Generation inside training under 2-process DeepSpeed ZeRO-3 (what on-policy methods do): every process samples
from the partitioned policy through `policy_generator`; the completions must equal greedy generation from the saved
(gathered) model in one plain process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .launching import REPO, launch

pytestmark = pytest.mark.distributed

def test_policy_generation_under_zero3_matches_the_saved_model(tmp_path):
    from posttrain.data import tokenizer_corpus
    from posttrain.generation import TransformersGenerator
    from posttrain.models import load_causal_lm, load_tokenizer, make_tiny_model

    model = make_tiny_model(tmp_path / "tiny", tokenizer_corpus())
    run_dir = tmp_path / "run"
    launch(Path(__file__).with_name("policy_generation_run.py"),
           "--config", str(REPO / "recipes" / "sft" / "sort8_tiny_cpu.yaml"), "--model_name_or_path", str(model),
           "--output_dir", str(run_dir), "--max_steps", "3", "--save_strategy", "no", "--dataset_num_examples", "64",
           "--per_device_train_batch_size", "8", "--build_tiny_model_if_missing", "false")

    from posttrain.generation import SamplingParams

    saved = TransformersGenerator(load_causal_lm(str(run_dir)), load_tokenizer(str(run_dir)))
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    for rank in (0, 1):
        got = json.loads((run_dir / f"policy_generation_rank{rank}.json").read_text())
        for mode in ("gathered", "sharded"):
            expected = [c[0].text for c in saved.generate(got["prompts"][mode], greedy)]
            assert got[mode] == expected, (rank, mode)
    assert len(json.loads((run_dir / "policy_generation_rank0.json").read_text())["gathered"]) == 3
