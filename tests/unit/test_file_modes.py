"""Files posttrain writes get the mode the umask says (0644 under 022), as `open()` would give them."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from posttrain.io import atomic_write_json, atomic_write_text, current_umask, file_modes_callback, restore_umask_modes

UMASK_MODES = [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)]


@pytest.fixture(params=UMASK_MODES, ids=lambda pair: f"umask-{pair[0]:03o}")
def umask_and_mode(request):
    """Run the test under the parametrised umask; put the old one back afterwards."""
    mask, mode = request.param
    old = os.umask(mask)
    try:
        yield mask, mode
    finally:
        os.umask(old)


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_current_umask_reads_the_umask_without_changing_it(umask_and_mode):
    mask, _ = umask_and_mode
    assert current_umask() == mask
    assert current_umask() == mask


def test_atomic_writes_get_the_umask_mode(tmp_path, umask_and_mode):
    _, mode = umask_and_mode
    atomic_write_text(tmp_path / "report.md", "text")
    atomic_write_json(tmp_path / "sub" / "eval.json", {"accuracy": 1.0})
    assert _mode(tmp_path / "report.md") == mode and _mode(tmp_path / "sub" / "eval.json") == mode
    with open(tmp_path / "plain.txt", "w") as handle:  # what a plain open() gives, for comparison
        handle.write("x")
    assert _mode(tmp_path / "plain.txt") == mode


def test_restore_umask_modes_fixes_a_file_safetensors_wrote(tmp_path, umask_and_mode):
    _, mode = umask_and_mode
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "deep").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "deep" / "model.safetensors"))
    restore_umask_modes(tmp_path / "model.safetensors")
    assert _mode(tmp_path / "model.safetensors") == mode
    restore_umask_modes(tmp_path)
    assert _mode(tmp_path / "deep" / "model.safetensors") == mode


def test_file_modes_callback_fixes_the_saved_checkpoint(tmp_path, umask_and_mode):
    _, mode = umask_and_mode
    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    save_file({"w": torch.zeros(2)}, str(checkpoint / "model.safetensors"))
    os.chmod(checkpoint / "model.safetensors", 0o600 if mode != 0o600 else 0o644)
    state = SimpleNamespace(global_step=3, is_local_process_zero=True)
    file_modes_callback().on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    assert _mode(checkpoint / "model.safetensors") == mode
