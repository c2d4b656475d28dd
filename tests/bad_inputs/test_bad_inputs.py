"""Every user mistake in cases.yaml: exit code 2, one line on stderr naming the problem and the fix, no traceback,
and no folder the command was given changed (no output folder created, no run touched)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from posttrain import cli

from .corpus import (
    FIXTURES,
    Case,
    changes,
    check_message,
    fill,
    load_cases,
    recipe_values,
    restore_copy,
    shorten,
    snapshot,
    truncate_files,
    write_files,
    write_recipe,
)

CASES = load_cases()
MIN_CASES = 40


@dataclass
class Prepared:
    argv: list[str]
    env: dict[str, str]
    roots: list[Path]  # folders whose contents must be byte-identical after the command


def prepare(case: Case, tmp: Path, request) -> Prepared:
    """Lay out the case's run folder and files under `tmp`; return its command line and watched folders."""
    tiny_model = request.getfixturevalue("tiny_model_dir")
    places = {"tmp": str(tmp), "tiny_model": str(tiny_model), "fixtures": str(FIXTURES),
              "recipe": str(tmp / "recipe.yaml")}
    roots = [tmp, tiny_model]
    if case.existing_run:
        pristine = request.getfixturevalue(f"{case.existing_run}_run")
        slot = request.getfixturevalue("run_slot")
        restore_copy(pristine, slot["run_dir"])
        shutil.copyfile(pristine.with_name(f"{pristine.name}.yaml"), slot["run_recipe"])
        places.update({name: str(path) for name, path in slot.items()})
        roots.append(slot["run_dir"])
    if case.recipe is not None:
        overrides = fill(dict(case.recipe), places)
        base = overrides.pop("base", "sft")
        write_recipe(tmp / "recipe.yaml", recipe_values(base, str(tiny_model), str(tmp / "out"), overrides))
    write_files(fill(case.files, places))
    truncate_files(fill(case.truncate, places))
    if any("{fixtures}" in arg for arg in case.argv):
        roots.append(FIXTURES)
    return Prepared(fill(case.argv, places), fill(case.env, places), roots)


def assert_untouched(before: dict[Path, dict], prepared: Prepared) -> None:
    for root in prepared.roots:
        diff = changes(before[root], snapshot(root))
        assert not diff, f"{root} changed:\n" + "\n".join(diff[:20])


@contextlib.contextmanager
def library_logs_to_stderr():
    """Point the libraries' log handlers (transformers, datasets) at the current (captured) stderr: they keep the
    stream of the test that first imported them, closed by now, where a real process would print to its stderr."""
    handlers = [handler for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
                for handler in getattr(logger, "handlers", []) if type(handler) is logging.StreamHandler]
    previous = [(handler.stream, handler.__dict__.get("flush")) for handler in handlers]
    for handler in handlers:
        handler.stream = sys.stderr  # not setStream(): it flushes the old stream, which may be closed
        handler.__dict__.pop("flush", None)  # transformers binds flush to the stderr of its import
    try:
        yield
    finally:
        for handler, (stream, flush) in zip(handlers, previous):
            handler.stream = stream
            if flush is not None:
                handler.flush = flush


@pytest.fixture
def case_dir(tmp_path, monkeypatch) -> Path:
    """The case's own folder, also the working directory, so a stray relative write shows up in its snapshot."""
    folder = tmp_path / "case"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)  # set by a run; restored after the case
    return folder


def test_corpus_is_large_and_well_formed():
    assert len(CASES) >= MIN_CASES
    assert all(case.expect and case.argv for case in CASES)
    assert sum(case.process for case in CASES) >= 3


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_in_process(case, case_dir, request, monkeypatch, capsys):
    prepared = prepare(case, case_dir, request)
    for name, value in prepared.env.items():
        monkeypatch.setenv(name, value)
    before = {root: snapshot(root) for root in prepared.roots}
    capsys.readouterr()  # drop what preparing printed
    with pytest.raises(SystemExit) as exited, library_logs_to_stderr():
        cli.main(prepared.argv)
    out, err = capsys.readouterr()
    assert exited.value.code == 2, f"exit code {exited.value.code}\n{shorten(out + err)}"
    check_message(err, out, case.expect)
    assert_untouched(before, prepared)


@pytest.mark.process
@pytest.mark.parametrize("case", [case for case in CASES if case.process], ids=lambda case: case.id)
def test_bad_input_as_a_process(case, case_dir, request):
    prepared = prepare(case, case_dir, request)
    before = {root: snapshot(root) for root in prepared.roots}
    done = subprocess.run([sys.executable, "-m", "posttrain.cli", *prepared.argv], cwd=case_dir,
                          env={**os.environ, **prepared.env}, capture_output=True, text=True)
    assert done.returncode == 2, f"exit code {done.returncode}\n{shorten(done.stderr)}"
    check_message(done.stderr, done.stdout, case.expect)
    assert_untouched(before, prepared)
