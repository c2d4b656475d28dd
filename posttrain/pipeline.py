"""Resumable pipelines: named stages, each a folder whose completion record says it finished.

A stage is finished when `<stage dir>/.done.json` exists, written atomically after the stage's outputs, and its
fingerprint matches the one asked for (when one is asked for). That is the only "finished?" rule: `Pipeline.stage`
applies it to every stage, and `posttrain.train.train` applies it to its run directory (fingerprint: the training
length, so a longer rerun resumes). A crash inside a stage leaves no record, so the rerun runs the stage again.

    pipe = Pipeline("runs/inpo")
    for t in (1, 2):
        step = pipe.sub(f"iter{t}")                      # stages iter1/sample, iter1/judge, ...
        samples = step.stage("sample", lambda d: sample(d / "samples.jsonl"))
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from posttrain.errors import UsageError
from posttrain.io import atomic_write_json, read_json

RECORD = ".done.json"


def as_json(value: Any) -> Any:
    """`value` as it reads back from a JSON file (paths become strings, tuples lists)."""
    return json.loads(json.dumps(value, default=str))


def completed(stage_dir: str | os.PathLike, fingerprint: Any = None) -> dict | None:
    """The stage's completion record if it finished (with `fingerprint`, when given), else None."""
    path = Path(stage_dir) / RECORD
    if not path.is_file():
        return None
    record = read_json(path)
    if fingerprint is not None and record.get("fingerprint") != as_json(fingerprint):
        return None
    return record


def begin(stage_dir: str | os.PathLike, fingerprint: Any = None, rerun: bool = False) -> dict | None:
    """The record of a finished stage (nothing to do), or None after dropping a stale record (the stage runs)."""
    record = None if rerun else completed(stage_dir, fingerprint)
    if record is None:
        (Path(stage_dir) / RECORD).unlink(missing_ok=True)
    return record


def finish(stage_dir: str | os.PathLike, result: Any, fingerprint: Any = None, seconds: float | None = None) -> dict:
    """Record the stage as finished (call after its outputs are written); return the record as stored."""
    record = {"result": as_json(result), "fingerprint": as_json(fingerprint),
              "seconds": None if seconds is None else round(seconds, 1), "finished_at": time.time()}
    atomic_write_json(Path(stage_dir) / RECORD, record)
    return record


class Pipeline:
    """Stages under `root`; `stage(name, fn)` runs `fn(stage_dir)` unless that stage finished already."""

    def __init__(self, root: str | os.PathLike, log: Callable[[str], None] = print):
        self.root, self.log = Path(root), log

    def path(self, name: str) -> Path:
        """The folder of stage `name` (nested names such as `iter1/sample` allowed)."""
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise UsageError(f"stage name {name!r} must be a relative path inside the pipeline")
        return self.root / name

    def sub(self, name: str) -> Pipeline:
        """The pipeline of stages under `<root>/<name>` (e.g. one iteration of a loop)."""
        return Pipeline(self.path(name), self.log)

    def done(self, name: str, fingerprint: Any = None) -> bool:
        return completed(self.path(name), fingerprint) is not None

    def result(self, name: str) -> Any:
        """The recorded result of a finished stage."""
        record = completed(self.path(name))
        if record is None:
            raise UsageError(f"stage {self.path(name)} has not finished (no {RECORD})")
        return record["result"]

    def stage(self, name: str, fn: Callable[[Path], Any], fingerprint: Any = None, rerun: bool = False) -> Any:
        """Run `fn(stage_dir)` and record its JSON-able result, or return the recorded result of an earlier run.
        `fn` may record completion itself (`train` does, with its run summary); that record is then kept."""
        stage_dir = self.path(name)
        record = begin(stage_dir, fingerprint, rerun)
        if record is not None:
            self.log(f"posttrain: stage {stage_dir} finished earlier; skipped")
            return record["result"]
        stage_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        result = fn(stage_dir)
        record = completed(stage_dir) or finish(stage_dir, result, fingerprint, time.monotonic() - start)
        return record["result"]
