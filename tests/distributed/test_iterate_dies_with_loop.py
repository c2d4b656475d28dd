"""A SIGKILLed `posttrain iterate` leaves no process of its train phase behind, under a 2-process `accelerate launch`
(docs/methods.md §3): neither the launcher nor its ranks, whether the loop dies while the ranks start up (before
they ask to die with their parent) or while they train. Only the loop is killed; a rerun then finishes the loop.

The ranks are held inside training by a `sitecustomize` callback (each marks its rank, then waits), so that the
second kill lands in training whatever the machine's speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .launching import REPO, TIMEOUT_S, check, write_loop_recipe

pytestmark = pytest.mark.distributed

DDP = REPO / "recipes" / "accelerate" / "cpu_ddp.yaml"
GONE_WITHIN_S = 60  # the failure bound for processes that outlive the loop, not a speed requirement

HOLD_IN_TRAINING = '''import os, sys
if os.environ.get("HOLD_TRAINING_IN") and sys.argv[1:2] == ["train"]:
    import time
    import posttrain.train as train_module
    from transformers import TrainerCallback

    class Hold(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            open(os.path.join(os.environ["HOLD_TRAINING_IN"], f"rank{args.process_index}"), "w").close()
            while True:
                time.sleep(1)

    build = train_module.build_trainer
    train_module.build_trainer = lambda recipe, callbacks=None: build(recipe, [*(callbacks or []), Hold()])
'''


def _phase_processes(train_yaml: Path) -> list[psutil.Process]:
    """The live processes of the train phase: the launcher and the ranks all name the iteration's train.yaml."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if str(train_yaml) in (process.info["cmdline"] or []) and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def _ranks(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if "accelerate.commands.launch" not in p.info["cmdline"]]


def _wait_for(condition, what: str, loop: subprocess.Popen | None, log: Path):
    deadline = time.monotonic() + TIMEOUT_S
    while not (result := condition()):
        assert loop is None or loop.poll() is None, f"the loop exited ({loop.returncode}) before {what}:\n" + \
            log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"no {what} after {TIMEOUT_S} s:\n" + log.read_text()[-4000:]
        time.sleep(0.2)
    return result


def _kill_loop_when(ready, recipe: Path, train_yaml: Path, env: dict, log: Path) -> None:
    """Start the loop, SIGKILL it alone once `ready()`, then require every process of the phase to be gone."""
    with log.open("w") as out:
        loop = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "iterate", "--config", str(recipe)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(ready, "the ranks", loop, log)
        phase = _phase_processes(train_yaml)
        assert len(phase) == 3 and len(_ranks(phase)) == 2, [p.info["cmdline"] for p in phase]  # launcher + 2 ranks
    finally:
        loop.kill()
        loop.wait()
    deadline = time.monotonic() + GONE_WITHIN_S
    while (left := _phase_processes(train_yaml)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in left:  # clean up before failing: a held rank would wait forever
        process.kill()
    assert not left, [p.info["cmdline"] for p in left]


def test_a_killed_loop_leaves_no_rank_training(tiny_model_dir: Path, tmp_path: Path):
    recipe, train_yaml = write_loop_recipe(tmp_path, tiny_model_dir, DDP), tmp_path / "loop" / "iter0" / "train.yaml"
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(HOLD_IN_TRAINING)
    held = tmp_path / "held"
    held.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "hooks"), "HOLD_TRAINING_IN": str(held),
           "TOKENIZERS_PARALLELISM": "false"}

    # 1. while the ranks start up: they have not yet asked to die with the launcher when the loop dies
    _kill_loop_when(lambda: len(_ranks(_phase_processes(train_yaml))) == 2, recipe, train_yaml, env,
                    tmp_path / "loop1.log")
    assert not list(held.iterdir())  # killed before any rank trained
    # 2. while both ranks train
    _kill_loop_when(lambda: len(list(held.iterdir())) == 2, recipe, train_yaml, env, tmp_path / "loop2.log")

    del env["HOLD_TRAINING_IN"]
    proc = check(subprocess.run([sys.executable, "-m", "posttrain.cli", "iterate", "--config", str(recipe)],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S))
    assert f"stage {tmp_path / 'loop' / 'iter0' / 'pairs'} finished earlier; skipped" in proc.stdout + proc.stderr
    assert (tmp_path / "loop" / "iter0" / "train" / ".done.json").exists()


def test_a_rank_started_after_the_loop_died_kills_itself_on_that_machine_only():
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid names no process
    script = ("import os; from posttrain.guards import DIE_WITH_LOOP_ENV, _process_table, die_with_loop\n"
              f"os.environ[DIE_WITH_LOOP_ENV] = 'another-machine {dead.pid}'; die_with_loop(); print('kept')\n"
              f"os.environ[DIE_WITH_LOOP_ENV] = _process_table() + ' {dead.pid}'; die_with_loop(); print('alive')")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -9 and proc.stdout.split() == ["kept"], (proc.returncode, proc.stdout, proc.stderr)
