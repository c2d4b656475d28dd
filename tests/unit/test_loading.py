"""Dataset loading from local files with clear errors for bad paths, empty files and missing columns."""

from __future__ import annotations

import json

import pytest

from posttrain.data import load_any_dataset, validate_columns
from posttrain.errors import UsageError


def test_local_jsonl_and_column_validation(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) for _ in range(3)))
    dataset = load_any_dataset(str(path), num_examples=2)
    assert len(dataset) == 2
    validate_columns(dataset, "preference")
    with pytest.raises(UsageError, match="missing column\\(s\\) completion needed for sft"):
        validate_columns(dataset, "sft")


def test_sft_accepts_messages_column(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    validate_columns(load_any_dataset(str(path)), "sft")


def test_bad_inputs(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_any_dataset(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UsageError, match="is empty"):
        load_any_dataset(str(tmp_path / "empty.jsonl"))
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(UsageError, match="unsupported type"):
        load_any_dataset(str(tmp_path / "data.txt"))


def test_proving_ground_spec():
    dataset = load_any_dataset("pg:sort8/sft", split="test", num_examples=10)
    assert len(dataset) == 10 and dataset[0]["prompt"][0]["role"] == "user"
