"""One `Generator` interface for sampling and greedy decoding: transformers, vLLM and OpenAI-compatible backends
sharing `SamplingParams` in and `Completion` out, plus a resumable JSONL cache and a pool that loads models lazily.
Heavy packages (vllm, openai) are imported only when a backend is built."""

from posttrain.generation.cache import generate_cached
from posttrain.generation.hf import TransformersGenerator
from posttrain.generation.loading import default_backend, load_generator, resolve_backend
from posttrain.generation.openai_api import OpenAICompatibleGenerator
from posttrain.generation.policy import policy_generator
from posttrain.generation.pool import LazyGenerator, ModelPool
from posttrain.generation.types import Completion, FinishReason, Generator, Prompt, SamplingParams
from posttrain.generation.vllm_engine import VLLMGenerator, start_vllm_engine, stop_vllm_engine

__all__ = ["Completion", "FinishReason", "Generator", "LazyGenerator", "ModelPool", "OpenAICompatibleGenerator",
           "Prompt", "SamplingParams", "TransformersGenerator", "VLLMGenerator", "default_backend", "generate_cached",
           "load_generator", "policy_generator", "resolve_backend", "start_vllm_engine", "stop_vllm_engine"]
