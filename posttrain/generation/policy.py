"""Sampling from the policy while it trains (on-policy methods such as DYPO, or INPO when it trains and samples in
one process), correctly under DDP and DeepSpeed ZeRO-3.

Under ZeRO-3 each process holds a shard of every weight. `policy_generator` gathers the full weights on every process
for the duration of the block (TRL's `unwrap_model_for_generation`), so each process then generates its own prompts
independently, at full speed, and unequal prompt counts per process are fine. Every process must enter the block,
because gathering is a collective. For a model too large to gather, `gather_zero3=False` keeps the weights sharded and
generates with `synced_gpus`, one all-gather per layer per token: far slower, and every process must then make the same
number of `generate` calls (pass the same number of prompts and a `batch_size` that divides it). For large-scale
sampling, prefer a vLLM engine on the saved checkpoint (`posttrain.generation.VLLMGenerator`).
"""

from __future__ import annotations

from contextlib import contextmanager

from posttrain.generation.hf import TransformersGenerator


@contextmanager
def policy_generator(model, accelerator, tokenizer, gather_zero3: bool = True, batch_size: int = 64,
                     model_id: str | None = None):
    """`with policy_generator(trainer.model_wrapped, trainer.accelerator, tokenizer) as generator:` yields a
    `TransformersGenerator` over the current in-memory weights of the (possibly DeepSpeed-wrapped) model."""
    from transformers.integrations import is_deepspeed_zero3_enabled
    from trl.models.utils import unwrap_model_for_generation

    sharded = is_deepspeed_zero3_enabled() and not gather_zero3
    with unwrap_model_for_generation(model, accelerator, gather_deepspeed3_params=gather_zero3) as unwrapped:
        yield TransformersGenerator(unwrapped, tokenizer, batch_size=batch_size, model_id=model_id,
                                    generate_kwargs={"synced_gpus": sharded})
