"""`posttrain.io.ResumableJsonl`, the one resumable JSON-lines helper (generation cache, annotation cache, MMLU's
scored.jsonl): torn last lines, skipping finished keys, flushed appends."""

from __future__ import annotations

import json

import pytest

from posttrain.errors import UsageError
from posttrain.io import ResumableJsonl, read_jsonl


def _by_id(record: dict) -> int:
    return record["id"]


def test_missing_file_starts_empty_and_appends_are_flushed(tmp_path):
    path = tmp_path / "sub" / "work.jsonl"
    store = ResumableJsonl(path, key=_by_id)
    assert store.done == {} and not path.exists()
    store.append({"id": 1, "x": "a"})
    # readable by another reader at once: the line is flushed, not held in a buffer
    assert path.read_text() == '{"id": 1, "x": "a"}\n'
    store.extend([{"id": 2}, {"id": 3}])
    assert list(read_jsonl(path)) == [{"id": 1, "x": "a"}, {"id": 2}, {"id": 3}]
    assert list(store.done) == [1, 2, 3]


def test_resume_skips_done_keys_and_newest_record_wins(tmp_path):
    path = tmp_path / "work.jsonl"
    path.write_text('{"id": 1, "v": "old"}\n{"id": 2, "v": "b"}\n{"id": 1, "v": "new"}\n')
    store = ResumableJsonl(path, key=_by_id)
    assert store.done == {1: {"id": 1, "v": "new"}, 2: {"id": 2, "v": "b"}}
    todo = [k for k in range(5) if k not in store.done]
    assert todo == [0, 3, 4]
    store.extend({"id": k} for k in todo)
    assert sorted(ResumableJsonl(path, key=_by_id).done) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("torn", ['{"id": 3, "v', '{"id": 3}'], ids=["cut-json", "complete-json-no-newline"])
def test_torn_last_line_is_not_read_and_is_cut_before_the_first_append(tmp_path, torn):
    path = tmp_path / "work.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n' + torn)
    store = ResumableJsonl(path, key=_by_id)
    assert sorted(store.done) == [1, 2]  # the unfinished line does not count as done, even if it parses
    assert path.read_text().endswith(torn)  # reading alone leaves the file as it was
    store.append({"id": 3})
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n{"id": 3}\n'


def test_unreadable_middle_lines_are_skipped(tmp_path):
    path = tmp_path / "work.jsonl"
    path.write_text('{"id": 1}\n{"id": 2, "v\n\n{"id": 4}\n')
    assert sorted(ResumableJsonl(path, key=_by_id).done) == [1, 4]


def test_a_record_without_the_key_is_a_one_line_usage_error(tmp_path):
    path = tmp_path / "work.jsonl"
    path.write_text(json.dumps({"other": 1}) + "\n")
    with pytest.raises(UsageError, match="not one of its records") as error:
        ResumableJsonl(path, key=_by_id)
    assert "\n" not in str(error.value) and "delete the file" in str(error.value)
