"""Checkpoint topology: what a checkpoint was saved under, what may resume it, and the one-line errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from posttrain.errors import UsageError
from posttrain.resume import TOPOLOGY_FILE, Topology, batch_change_note, check_resume, compatible, saved_topology

pytestmark = pytest.mark.unit


def _accelerator(processes: int, zero_stage: int = 0):
    plugin = SimpleNamespace(zero_stage=zero_stage) if zero_stage else None
    return SimpleNamespace(num_processes=processes, state=SimpleNamespace(deepspeed_plugin=plugin))


def _zero_checkpoint(path, ranks: int, full_weights: bool = True):
    (path / "global_step4").mkdir(parents=True)
    (path / "latest").write_text("global_step4")
    for rank in range(ranks):
        (path / "global_step4" / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").touch()
    if full_weights:
        (path / "model.safetensors").touch()
    return path


def test_saved_topology_prefers_the_record_then_infers_from_zero_shards(tmp_path):
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / TOPOLOGY_FILE).write_text(json.dumps({"processes": 4, "zero_stage": 2}))
    assert saved_topology(recorded) == Topology(4, 2)
    assert saved_topology(_zero_checkpoint(tmp_path / "zero", ranks=3)) == Topology(3, -1)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert saved_topology(plain) == Topology(None, 0)


@pytest.mark.parametrize(("saved", "current", "ok"), [
    (Topology(2, 0), Topology(1, 0), True),    # a full optimizer state loads anywhere
    (Topology(None, 0), Topology(8, 0), True),
    (Topology(2, 3), Topology(2, 3), True),
    (Topology(2, -1), Topology(2, 3), True),   # inferred stage: any ZeRO launch with the same process count
    (Topology(2, 3), Topology(4, 3), False),
    (Topology(2, 3), Topology(2, 2), False),
    (Topology(2, 3), Topology(1, 0), False),
    (Topology(1, 0), Topology(1, 3), False),
])
def test_compatible(saved, current, ok):
    assert compatible(saved, current) is ok


def test_zero_checkpoint_on_a_plain_launch_errors_unless_the_optimizer_reset_is_asked_for(tmp_path):
    checkpoint = _zero_checkpoint(tmp_path / "ckpt", ranks=2)
    (checkpoint / TOPOLOGY_FILE).write_text(json.dumps({"processes": 2, "zero_stage": 3}))
    with pytest.raises(UsageError) as err:
        check_resume(str(checkpoint), _accelerator(1), reset_optimizer=False)
    message = str(err.value)
    assert "\n" not in message and "saved by 2 processes with DeepSpeed ZeRO-3" in message
    assert "1 process with no DeepSpeed" in message and "--reset_optimizer_on_resume true" in message
    assert check_resume(str(checkpoint), _accelerator(1), reset_optimizer=True) is True
    assert check_resume(str(checkpoint), _accelerator(2, 3), reset_optimizer=False) is False


def test_reset_needs_full_weights_and_a_plain_launch(tmp_path):
    shards_only = _zero_checkpoint(tmp_path / "shards", ranks=2, full_weights=False)
    with pytest.raises(UsageError, match="holds only ZeRO shards"):
        check_resume(str(shards_only), _accelerator(1), reset_optimizer=True)
    with pytest.raises(UsageError, match="DeepSpeed cannot load optimizer shards across topologies"):
        check_resume(str(shards_only), _accelerator(4, 3), reset_optimizer=True)


def test_plain_checkpoint_on_another_process_count_warns_about_the_global_batch(tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / TOPOLOGY_FILE).write_text(json.dumps({"processes": 2, "zero_stage": 0}))
    note = batch_change_note(str(checkpoint), _accelerator(1))
    assert "saved by 2 processes and resumes on 1" in note and "scaled by 2/1" in note
    assert batch_change_note(str(checkpoint), _accelerator(2)) is None
