"""Shared fixtures: a tiny offline model built once per session, and a recipe writer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    """Keep the reference log-prob cache (and anything else posttrain caches) out of the user's home."""
    import tempfile

    os.environ.setdefault("POSTTRAIN_CACHE", tempfile.mkdtemp(prefix="posttrain-test-cache-"))

REPO = Path(__file__).resolve().parents[1]

# Settings every CPU recipe needs (TRL defaults bf16 and gradient checkpointing on).
CPU_SETTINGS = {"use_cpu": True, "bf16": False, "gradient_checkpointing": False, "report_to": "none",
                "dataloader_num_workers": 0}


def pytest_collection_modifyitems(items):
    for item in items:
        tier = Path(item.fspath).parent.name
        if tier in ("unit", "integration", "distributed", "e2e", "bad_inputs"):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", tokenizer_corpus(), seed=0)


@pytest.fixture
def write_recipe(tmp_path):
    """write_recipe({...}) -> path of a YAML file holding exactly those keys."""

    def _write(values: dict, name: str = "recipe.yaml") -> str:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        return str(path)

    return _write
