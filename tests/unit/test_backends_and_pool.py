"""The one backend resolver, the one vLLM engine set-up (with a fake `vllm`), and the lazy model pool."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType, SimpleNamespace

import pytest

from posttrain.errors import UsageError
from posttrain.evaluation import loglikelihood
from posttrain.generation import LazyGenerator, ModelPool, SamplingParams, default_backend, resolve_backend
from posttrain.generation import pool as pool_module
from posttrain.generation.vllm_engine import start_vllm_engine


def test_resolver_turns_auto_into_the_default_and_checks_the_choices():
    assert resolve_backend("auto") == default_backend() in ("vllm", "transformers")
    assert resolve_backend("openai") == "openai"
    with pytest.raises(UsageError, match="unknown generation backend 'openai'; choose one of auto, transformers, vllm"):
        resolve_backend("openai", loglikelihood.BACKENDS)


def test_auto_means_transformers_without_vllm(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert resolve_backend("auto") == "transformers"
    with pytest.raises(UsageError, match="needs vLLM"):
        start_vllm_engine("some-model")


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in `vllm` package whose LLM records its keyword arguments; `platform.cpu` picks the device."""
    platform = SimpleNamespace(cpu=True)
    platform.is_cpu = lambda: platform.cpu
    vllm = ModuleType("vllm")
    vllm.LLM = lambda **kwargs: kwargs
    platforms = ModuleType("vllm.platforms")
    platforms.current_platform = platform
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    return platform


def test_engine_defaults_on_cpu_and_gpu(fake_vllm):
    import os

    cpu = start_vllm_engine("m", dtype="auto", seed=3)
    assert cpu == {"model": "m", "tokenizer": "m", "dtype": "float32", "gpu_memory_utilization": 0.2, "seed": 3}
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert start_vllm_engine("m", tokenizer="t", dtype="bfloat16", gpu_memory_utilization=0.5)["dtype"] == "bfloat16"
    fake_vllm.cpu = False
    gpu = start_vllm_engine("m")
    assert (gpu["dtype"], gpu["gpu_memory_utilization"]) == ("auto", 0.9)


def test_the_scorer_starts_its_engine_through_the_shared_set_up(fake_vllm, monkeypatch, tiny_model_dir):
    from posttrain.models import load_tokenizer

    engines = []

    def engine(model, **options):
        engines.append(options)
        model_config = SimpleNamespace(max_model_len=options["max_model_len"])
        return SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(model_config=model_config)))

    monkeypatch.setattr("posttrain.generation.vllm_engine.start_vllm_engine", engine)
    scorer = loglikelihood.load_scorer(str(tiny_model_dir), load_tokenizer(str(tiny_model_dir)), "vllm",
                                       max_length=100)
    assert scorer.name == "vllm" and scorer.max_length == 100
    assert engines[0]["max_model_len"] == 101 and engines[0]["dtype"] == "auto"


class FakeGenerator:
    def __init__(self, source: str):
        self.source, self.closed = source, False

    def generate(self, prompts, params, on_result=None):
        return [[self.source] for _ in prompts]

    def close(self):
        self.closed = True


def test_pool_loads_lazily_and_one_model_at_a_time(monkeypatch):
    loaded = []

    def load(source, backend, **options):
        loaded.append((source, backend, options))
        return FakeGenerator(source)

    monkeypatch.setattr(pool_module, "load_generator", load)
    pool = ModelPool("transformers", batch_size=4)
    policy, reference = pool.lazy("policy"), pool.lazy("reference")
    assert isinstance(policy, LazyGenerator) and policy.model_id == "transformers:policy"
    assert loaded == []  # nothing is loaded before something has to be generated
    assert policy.generate(["p"], SamplingParams()) == [["policy"]]
    first = pool.generator
    assert reference.generate(["p", "q"], SamplingParams()) == [["reference"], ["reference"]]
    assert first.closed and pool.source == "reference"  # the first model was released before the second loaded
    policy.generate(["p"], SamplingParams())
    assert [source for source, _, _ in loaded] == ["policy", "reference", "policy"]
    assert loaded[0][1:] == ("transformers", {"batch_size": 4})
    pool.close()
    assert pool.generator is None


def test_pool_rejects_an_unknown_backend():
    with pytest.raises(UsageError, match="unknown generation backend 'tgi'"):
        ModelPool("tgi")
