"""One `Generator` interface for sampling and greedy decoding: transformers, vLLM and OpenAI-compatible backends
sharing `SamplingParams` in and `Completion` out, plus a resumable JSONL cache. Heavy packages (vllm, openai)
are imported only when a backend is built."""

from posttrain.generation.cache import generate_cached
from posttrain.generation.hf import TransformersGenerator
from posttrain.generation.loading import load_generator
from posttrain.generation.openai_api import OpenAICompatibleGenerator
from posttrain.generation.policy import policy_generator
from posttrain.generation.types import Completion, FinishReason, Generator, Prompt, SamplingParams
from posttrain.generation.vllm_engine import VLLMGenerator

__all__ = ["Completion", "FinishReason", "Generator", "OpenAICompatibleGenerator", "Prompt", "SamplingParams",
           "TransformersGenerator", "VLLMGenerator", "generate_cached", "load_generator", "policy_generator"]
