"""Resumable generation: each finished prompt's completions are appended to a JSONL cache as soon as they exist,
so a killed run resumes where it stopped and never regenerates a finished prompt.

Every line is one prompt: {"index", "prompt_sha", "config_sha", "completions"}. `config_sha` hashes the sampling
params and the model identity; a cache written under another config is refused (UsageError) rather than mixed in,
so one file always holds one experiment. A line whose `prompt_sha` differs from the prompt now at that index (the
prompt list changed) is ignored and that prompt is generated again; the newest matching line for an index wins.
The file is read and appended through `posttrain.io.ResumableJsonl`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os

from posttrain.console import resumed_bar
from posttrain.errors import UsageError
from posttrain.generation.types import Completion, Generator, SamplingParams
from posttrain.io import ResumableJsonl


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def prompt_sha(prompt) -> str:
    """Hash of a text, chat or token-id prompt (the three never collide: their JSON forms differ in type)."""
    return _sha(prompt)


def config_sha(params: SamplingParams, model_id: str) -> str:
    return _sha({"params": params.to_dict(), "model": model_id})


def open_cache(cache_path: str | os.PathLike, params: SamplingParams, model_id: str) -> ResumableJsonl:
    """The cache's records by (index, prompt_sha); UsageError if it was written under another config."""
    config = config_sha(params, model_id)
    cache = ResumableJsonl(cache_path, key=lambda record: (record["index"], record["prompt_sha"]))
    for record in cache.done.values():
        if record.get("config_sha") != config:
            raise UsageError(f"generation cache {str(cache_path)!r} was written with other sampling params or another "
                             f"model (config {record.get('config_sha')} != {config}); delete it or pass another "
                             "cache path")
    return cache


def cached_completions(cache: ResumableJsonl, prompts: list) -> dict[int, list[Completion]]:
    """index -> completions for the prompts `cache` already holds."""
    found = {index: cache.done.get((index, prompt_sha(prompt))) for index, prompt in enumerate(prompts)}
    return {index: [Completion.from_dict(c) for c in record["completions"]]
            for index, record in found.items() if record is not None}


def generate_cached(generator: Generator, prompts: list, params: SamplingParams, cache_path: str | os.PathLike,
                    model_id: str | None = None, chunk_size: int = 64,
                    progress: str | None = None) -> list[list[Completion]]:
    """`generator.generate(prompts, params)`, streamed to and resumed from `cache_path`.

    `model_id` defaults to `generator.model_id`; pass one that changes whenever the weights do. Generators whose
    `generate` takes `on_result` stream every finished prompt; others are called `chunk_size` prompts at a time.
    With `progress` (a label), says how many generations the cache served and draws a bar for the rest.
    """
    model_id = model_id or getattr(generator, "model_id", None)
    if not model_id:
        raise UsageError("generate_cached needs a model_id (the generator has none): pass model_id='<model name>'")
    cache = open_cache(cache_path, params, model_id)
    done = cached_completions(cache, prompts)
    missing = [i for i in range(len(prompts)) if i not in done]
    bar = resumed_bar(progress, len(done), "generations", cache_path, len(missing))
    if missing:
        config = config_sha(params, model_id)

        def record(local_index: int, completions: list[Completion]) -> None:
            index = missing[local_index]
            for completion in completions:
                completion.prompt_index = index
            done[index] = completions
            cache.append({"index": index, "prompt_sha": prompt_sha(prompts[index]), "config_sha": config,
                          "completions": [c.to_dict() for c in completions]})
            bar.update(1)

        with bar:
            if "on_result" in inspect.signature(generator.generate).parameters:
                generator.generate([prompts[i] for i in missing], params, on_result=record)
            else:
                for start in range(0, len(missing), chunk_size):
                    chunk = missing[start:start + chunk_size]
                    for offset, completions in enumerate(generator.generate([prompts[i] for i in chunk], params)):
                        record(start + offset, completions)
    return [done[i] for i in range(len(prompts))]
