"""`ModelPool`: generators by model name, loaded on first use and one at a time, and `LazyGenerator`, a generator
that loads its model only when something has to be generated (outputs already in a cache need no model)."""

from __future__ import annotations

import gc

from posttrain.generation.loading import load_generator, resolve_backend


class ModelPool:
    """Holds at most one loaded generator: a vLLM engine keeps its memory until it is released, so asking for
    another model closes the current one first. `backend` is resolved once (`auto`: vLLM when installed)."""

    def __init__(self, backend: str = "auto", batch_size: int = 64):
        self.backend, self.batch_size = resolve_backend(backend), batch_size
        self.source, self.generator = None, None

    def get(self, source: str):
        """The generator for `source` (a model path or hub id), loading it if another one is loaded."""
        if source != self.source:
            self.close()
            # Transformers draws no bar by default, vLLM does: the callers' `generate_cached` and `annotate_cached`
            # draw a labelled one instead.
            options = {"batch_size": self.batch_size} if self.backend == "transformers" else {"show_progress": False}
            self.generator, self.source = load_generator(source, self.backend, **options), source
        return self.generator

    def lazy(self, source: str) -> LazyGenerator:
        return LazyGenerator(self, source)

    def close(self) -> None:
        """Release the loaded generator (a vLLM engine's processes and memory now)."""
        if hasattr(self.generator, "close"):
            self.generator.close()
        self.source, self.generator = None, None
        gc.collect()


class LazyGenerator:
    """A `Generator` for `source` whose model is loaded from `pool` on the first `generate` call. Its `model_id`
    (`<backend>:<source>`) names the cache entries it writes."""

    def __init__(self, pool: ModelPool, source: str):
        self.pool, self.source = pool, source
        self.model_id = f"{pool.backend}:{source}"

    def generate(self, prompts, params, on_result=None):
        generator = self.pool.get(self.source)
        if on_result is None:
            return generator.generate(prompts, params)
        return generator.generate(prompts, params, on_result=on_result)
