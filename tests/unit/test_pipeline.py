"""Resumable pipelines: a stage runs once, a crash leaves no record, results survive a rerun, names nest."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.errors import UsageError
from posttrain.io import atomic_write_text
from posttrain.pipeline import RECORD, Pipeline, begin, completed, finish

pytestmark = pytest.mark.unit


class Counter:
    """A stage function that writes an output file and counts its calls."""

    def __init__(self, result=None, fail: bool = False):
        self.calls, self.result, self.fail = 0, result, fail

    def __call__(self, stage_dir: Path):
        self.calls += 1
        atomic_write_text(stage_dir / "out.txt", "partial")
        if self.fail:
            raise RuntimeError("killed mid-stage")
        return self.result


def _quiet(root) -> Pipeline:
    return Pipeline(root, log=lambda message: None)


def test_a_stage_runs_once_and_returns_its_recorded_result(tmp_path):
    fn = Counter({"accuracy": 0.5, "path": tmp_path / "x"})
    first = _quiet(tmp_path).stage("sft", fn)
    again = _quiet(tmp_path).stage("sft", fn)  # a new process: a fresh Pipeline object
    assert fn.calls == 1
    assert first == again == {"accuracy": 0.5, "path": str(tmp_path / "x")}  # as JSON reads it back
    assert (tmp_path / "sft" / RECORD).is_file() and _quiet(tmp_path).result("sft") == first


def test_a_crash_leaves_no_record_and_the_rerun_runs_the_stage_again(tmp_path):
    pipe = _quiet(tmp_path)
    with pytest.raises(RuntimeError):
        pipe.stage("pairs", Counter(fail=True))
    assert (tmp_path / "pairs/out.txt").exists() and not pipe.done("pairs")
    with pytest.raises(UsageError, match="has not finished"):
        pipe.result("pairs")
    fn = Counter(7)
    assert pipe.stage("pairs", fn) == 7 and fn.calls == 1 and pipe.done("pairs")


def test_nested_stages_and_sub_pipelines(tmp_path):
    pipe = _quiet(tmp_path)
    for t in (1, 2):
        step = pipe.sub(f"iter{t}")
        step.stage("sample", Counter(t))
        step.stage("judge", Counter(10 * t))
    assert pipe.result("iter2/judge") == 20 and pipe.done("iter1/sample")
    assert (tmp_path / "iter1/sample/out.txt").exists()
    fn = Counter()
    pipe.stage("iter1/sample", fn)  # the same stage by its nested name: finished
    assert fn.calls == 0
    for bad in ("", "/abs", "../outside"):
        with pytest.raises(UsageError, match="relative path"):
            pipe.path(bad)


def test_a_fingerprint_mismatch_or_rerun_runs_the_stage_again(tmp_path):
    pipe = _quiet(tmp_path)
    fn = Counter("r")
    pipe.stage("eval", fn, fingerprint=["dpo"])
    pipe.stage("eval", fn, fingerprint=("dpo",))  # compared as JSON: the same fingerprint
    assert fn.calls == 1
    pipe.stage("eval", fn, fingerprint=["dpo", "rpo"])
    pipe.stage("eval", fn, fingerprint=["dpo", "rpo"], rerun=True)
    assert fn.calls == 3 and pipe.done("eval") and pipe.done("eval", ["dpo", "rpo"]) and not pipe.done("eval", [])


def test_a_stage_function_may_record_its_own_completion(tmp_path):
    def trains(stage_dir):
        finish(stage_dir, {"steps": 6}, fingerprint={"max_steps": 6})
        return stage_dir

    assert _quiet(tmp_path).stage("run", trains) == {"steps": 6}
    assert completed(tmp_path / "run", {"max_steps": 6})["result"] == {"steps": 6}
    assert begin(tmp_path / "run", {"max_steps": 8}) is None  # a longer run is not finished: record dropped
    assert not (tmp_path / "run" / RECORD).exists()
