"""A model's context window, and fitting generation into it: prompts plus new tokens must fit its positions."""

from __future__ import annotations

from posttrain.errors import UsageError
from posttrain.generation.decoding import encode_prompt


def context_window(source: str) -> int | None:
    """The positions `source`'s config allows (`max_position_embeddings`), or None when it names none or cannot be
    read here (a served model, a hub id while offline)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError):
        return None
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def longest_prompt_tokens(tokenizer, prompts) -> int:
    """Tokens in the longest prompt as the generators encode it (chat template with the generation prompt); 0 for
    none."""
    return max((len(encode_prompt(tokenizer, prompt)) for prompt in prompts), default=0)


def fit_max_new_tokens(requested: int, context: int | None, longest_prompt: int, model: str) -> int:
    """`requested`, or the room the longest prompt leaves in `context` (printing a one-line note); UsageError when
    the prompt alone fills the context."""
    if context is None or longest_prompt + requested <= context:
        return requested
    room = context - longest_prompt
    if room < 1:
        raise UsageError(f"the longest prompt has {longest_prompt} tokens, which fills the {context}-position context "
                         f"of {model}; use shorter instructions or a model with a longer context")
    print(f"posttrain: max_new_tokens {requested} capped at {room}: {model} has {context} positions and the longest "
          f"prompt takes {longest_prompt}", flush=True)
    return room
