"""The bad-input corpus: load `cases.yaml`, lay out a case's files, and snapshot folders to prove nothing changed.

A case is data (see README.md); this module turns it into a command line and the files it reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..conftest import CPU_SETTINGS

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"
CASE_KEYS = {"id", "argv", "expect", "files", "recipe", "existing_run", "truncate", "env", "process"}
RUN_KINDS = ("finished", "interrupted")

# The tiny base recipes of a case's `recipe:` field: `sft` (the default, also the session runs') and `dpo`.
BASE_RECIPES: dict[str, dict[str, Any]] = {
    "sft": {"method": "sft", "dataset_name": "pg:sort8/sft", "dataset_num_examples": 16, "max_steps": 2,
            "per_device_train_batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "steps",
            "save_steps": 1, "max_length": 64, "seed": 0, **CPU_SETTINGS},
    "dpo": {"method": "dpo", "dataset_name": "pg:sort8/preference", "dataset_num_examples": 8, "max_steps": 1,
            "per_device_train_batch_size": 8, "learning_rate": 1e-4, "logging_steps": 1, "save_strategy": "no",
            "max_length": 64, "seed": 0, **CPU_SETTINGS},
}


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: list[str]
    files: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] | None = None
    existing_run: str | None = None
    truncate: list[dict] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: bool = False


def load_cases(path: Path = HERE / "cases.yaml") -> list[Case]:
    """Every case of the corpus, checked for unknown keys and unique ids."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    cases = []
    for entry in raw:
        unknown = set(entry) - CASE_KEYS
        assert not unknown, f"case {entry.get('id')!r}: unknown key(s) {sorted(unknown)}"
        expect = entry["expect"]
        entry = {**entry, "expect": [expect] if isinstance(expect, str) else list(expect)}
        assert entry.get("existing_run") in (None, *RUN_KINDS), f"case {entry['id']!r}: existing_run"
        cases.append(Case(**entry))
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases


def fill(value: Any, places: dict[str, str]) -> Any:
    """`value` with every `{name}` placeholder replaced, inside strings, lists and mappings (keys too)."""
    if isinstance(value, str):
        for name, replacement in places.items():
            value = value.replace("{" + name + "}", replacement)
        return value
    if isinstance(value, list):
        return [fill(v, places) for v in value]
    if isinstance(value, dict):
        return {fill(k, places): fill(v, places) for k, v in value.items()}
    return value


def recipe_values(base: str, model: str, output_dir: str, overrides: dict | None = None) -> dict[str, Any]:
    """A base recipe with `overrides` applied; an override of null removes the key."""
    values = {**BASE_RECIPES[base], "model_name_or_path": model, "output_dir": output_dir}
    for key, value in (overrides or {}).items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    return values


def write_recipe(path: Path, values: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def file_bytes(spec: Any) -> bytes | None:
    """The bytes a `files:` entry stands for; None for `{dir: true}` (a folder)."""
    if isinstance(spec, str):
        return spec.encode("utf-8")
    (kind, value), = spec.items()
    if kind == "dir":
        return None
    if kind == "latin1":
        return value.encode("latin-1")
    if kind == "hex":
        return bytes.fromhex(value)
    if kind == "json":
        return json.dumps(value).encode()
    if kind == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in value).encode()
    raise AssertionError(f"unknown file kind {kind!r}")


def write_files(files: dict[str, Any]) -> None:
    for name, spec in files.items():
        path = Path(name)
        data = file_bytes(spec)
        if data is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def truncate_files(rules: list[dict]) -> None:
    """Cut every file matching `path` (a glob) to `keep` (a fraction) of its size, as a crash mid-write would."""
    for rule in rules:
        pattern = Path(rule["path"])
        matches = sorted(Path(pattern.anchor).glob(str(pattern.relative_to(pattern.anchor))))
        assert matches, f"truncate: nothing matches {rule['path']}"
        for path in matches:
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * float(rule.get("keep", 0.5)))])


def restore_copy(pristine: Path, target: Path) -> None:
    """`target` as an exact copy of `pristine` (anything there before is removed)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(pristine, target)


def snapshot(root: Path) -> dict[str, Any]:
    """relative path -> 'dir' or (size, sha256) for everything under `root`; {} when `root` does not exist."""
    if not root.exists():
        return {}
    state: dict[str, Any] = {}
    for current, dirs, files in os.walk(root):
        base = Path(current)
        for name in dirs:
            state[str((base / name).relative_to(root))] = "dir"
        for name in files:
            data = (base / name).read_bytes()
            state[str((base / name).relative_to(root))] = (len(data), hashlib.sha256(data).hexdigest())
    return state


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human-readable differences between two snapshots of one folder."""
    added = [f"+ {p}" for p in sorted(set(after) - set(before))]
    removed = [f"- {p}" for p in sorted(set(before) - set(after))]
    changed = [f"~ {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return added + removed + changed


def shorten(text: str, keep: int = 1500) -> str:
    """`text`, or its start and end when it is long (a traceback's first and last frames both matter)."""
    return text if len(text) <= 2 * keep else f"{text[:keep]}\n[...]\n{text[-keep:]}"


def check_message(stderr: str, stdout: str, expect: list[str]) -> str:
    """The one stderr line, after asserting the one-line contract and every `expect` pattern."""
    assert "Traceback" not in stdout + stderr, f"traceback printed:\n{shorten(stdout + stderr)}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"stderr must be exactly one line, got {len(lines)}:\n{shorten(stderr)}"
    line = lines[0]
    assert line.startswith("posttrain: error: "), line
    missing = [pattern for pattern in expect if not re.search(pattern, line)]
    assert not missing, f"{line}\ndoes not match {missing}"
    return line
