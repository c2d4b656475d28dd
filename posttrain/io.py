"""Atomic file writes and JSON-lines helpers: a crash never leaves a half-written result file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any

from posttrain.errors import UsageError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux's /proc), else set and put back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def umask_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the umask (0o644 under umask 022)."""
    return 0o666 & ~current_umask()


def restore_umask_modes(path: str | os.PathLike) -> None:
    """Give the file `path`, or every file under the folder `path`, the mode `open()` would have given it. Libraries
    that write through a private temporary file (safetensors, our atomic writes) leave 0600 otherwise."""
    path, mode = Path(path), umask_mode()
    for file in [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
        if file.stat().st_mode & 0o777 != mode:
            file.chmod(mode)


def file_modes_callback():
    """A TrainerCallback that restores umask modes on each checkpoint the Trainer saves (each node's main process)."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class RestoreFileModes(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if state.is_local_process_zero and checkpoint.is_dir():
                restore_umask_modes(checkpoint)

    return RestoreFileModes()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path` (mode as the umask says)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), umask_mode())  # mkstemp creates 0600 whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_folder(path: str | os.PathLike, setting: str) -> None:
    """An output folder may exist, but not as a file (or under one): checked before any model loads."""
    for place in (Path(path).expanduser(), *Path(path).expanduser().parents):
        if place.exists():
            if not place.is_dir():
                raise UsageError(f"{setting} {str(path)!r} must be a folder, but {str(place)!r} is a file; choose "
                                 f"another folder (new or existing)")
            return


def check_output_file(path: str | os.PathLike, setting: str) -> None:
    """An output file must not be an existing folder, and its parent must not be a file."""
    if Path(path).expanduser().is_dir():
        example = os.path.join(str(path), "rows.jsonl")
        raise UsageError(f"{setting} {str(path)!r} is a folder; pass a file path (e.g. {example!r})")
    check_output_folder(Path(path).expanduser().parent, f"{setting}'s folder")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file or a folder tree; nothing if it does not exist."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def replace_dir(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a finished `staging` folder to `target`. An existing `target` is moved aside first and removed only once
    the new folder is in place, so a crash leaves either the old or the new folder, never a half-written one."""
    staging, target = Path(staging), Path(target)
    previous = target.with_name(target.name + ".replaced")
    if target.exists():
        remove_path(previous)
        os.replace(target, previous)
    os.replace(staging, target)
    remove_path(previous)


def end_torn_line(path: str | os.PathLike) -> None:
    """Drop a partial last line left by a killed writer, so the next append starts on a line of its own.
    Call once before resuming a stream with `append_jsonl`."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        data = path.read_bytes()
        handle.truncate(data.rfind(b"\n") + 1)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one record as a line and flush it, so a killed process loses at most the line in flight."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
        handle.flush()


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield records; a torn last line (from a killed writer) is skipped rather than fatal."""
    path = Path(path)
    if not path.exists():
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in records))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in `path` (a file this project wrote; user files go through `read_json_list`)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_list(path: str, what: str, required: tuple[str, ...]) -> list[dict]:
    """A JSON list of objects that all have `required` keys, or a one-line UsageError saying what is wrong."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"{what} file {path!r} does not exist")
    text = file.read_text(encoding="utf-8").strip()
    if not text:
        raise UsageError(f"{what} file {path!r} is empty")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{what} file {path!r} is not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UsageError(f"{what} file {path!r} must hold a JSON list of objects with keys {', '.join(required)}")
    if not rows:
        raise UsageError(f"{what} file {path!r} holds an empty list")
    for index, row in enumerate(rows):
        missing = [k for k in required if k not in row]
        if missing:
            raise UsageError(f"{what} file {path!r}: entry {index} is missing key(s) {', '.join(missing)}")
    return rows


class ResumableJsonl:
    """A JSON-lines file of records by key, for work that resumes after a kill (one writer per file).

    `done` maps `key(record)` to the newest record on a complete line; a torn last line (a killed writer's) is not
    read and is cut off before the first `append`, which writes and flushes one record. Skip the keys in `done`,
    append each result as it is made, and a rerun redoes only what was lost.
    """

    def __init__(self, path: str | os.PathLike, key: Callable[[dict], Hashable]):
        self.path, self.key = Path(path), key
        self.done: dict[Hashable, dict] = {self._key_of(record): record for record in _complete_records(self.path)}
        self._line_ended = False

    def append(self, record: dict) -> None:
        key = self.key(record)
        if not self._line_ended:
            end_torn_line(self.path)
            self._line_ended = True
        append_jsonl(self.path, record)
        self.done[key] = record

    def extend(self, records: Iterable[dict]) -> None:
        for record in records:
            self.append(record)

    def _key_of(self, record) -> Hashable:
        try:
            return self.key(record)
        except (KeyError, TypeError, IndexError) as err:
            raise UsageError(f"{self.path} holds a line that is not one of its records (no {err}); delete the file "
                             "or pass another path") from None


def _complete_records(path: Path) -> Iterator[dict]:
    """Records on newline-terminated lines; unreadable lines are skipped."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.endswith("\n") and line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue
