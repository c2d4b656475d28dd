"""Where a causal LM keeps its embedding, decoder layers, and each layer's MLP and attention (docs/methods.md §5).

Causal tracing hooks these modules and layer-frozen unlearning trains only the MLP weights of chosen layers; both
find them through one table keyed by `config.model_type`, not per-family code. Most decoder-only families (Llama,
Qwen2/3, Mistral, OLMo, OLMo2, Gemma, and the MoE families Mixtral, Qwen-MoE, OLMoE) share one layout; GPT-2 and
GPT-NeoX (Pythia) name theirs differently.
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.errors import UsageError


@dataclass(frozen=True)
class Layout:
    """Dotted paths from the causal-LM module: `embedding` and `layers` from the model, `mlp` and `attention`
    from one decoder layer."""

    embedding: str
    layers: str
    mlp: str
    attention: str


_DECODER = Layout("model.embed_tokens", "model.layers", "mlp", "self_attn")
LAYOUTS: dict[str, Layout] = {
    **dict.fromkeys(("llama", "qwen2", "qwen3", "mistral", "olmo", "olmo2", "gemma", "gemma2"), _DECODER),
    # Mixture-of-Experts families: a layer's `mlp` is its sparse block (router and experts), still one tensor out.
    **dict.fromkeys(("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"), _DECODER),
    "gpt2": Layout("transformer.wte", "transformer.h", "mlp", "attn"),
    "gpt_neox": Layout("gpt_neox.embed_in", "gpt_neox.layers", "mlp", "attention"),
}


def _unwrap(model):
    """The causal LM itself when `model` is a PEFT wrapper."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _get(module, path: str):
    for name in path.split("."):
        module = getattr(module, name)
    return module


def layout_of(model) -> Layout:
    """The layout of `model` (a causal LM or a PEFT wrapper around one); unknown families are a usage error."""
    model_type = getattr(getattr(_unwrap(model), "config", None), "model_type", None)
    if model_type not in LAYOUTS:
        raise UsageError(f"model type {model_type!r} has no module map for tracing or layer freezing; supported: "
                         f"{', '.join(sorted(LAYOUTS))} (add its entry to posttrain/model_layout.py LAYOUTS)")
    return LAYOUTS[model_type]


def embedding_module(model):
    return _get(_unwrap(model), layout_of(model).embedding)


def decoder_layers(model) -> list:
    return list(_get(_unwrap(model), layout_of(model).layers))


def layer_module(model, layer: int, kind: str):
    """Decoder layer `layer` itself (`hidden`: its output is the residual stream), or its `mlp` or `attn` module."""
    block = decoder_layers(model)[layer]
    if kind == "hidden":
        return block
    layout = layout_of(model)
    return _get(block, {"mlp": layout.mlp, "attn": layout.attention}[kind])


def check_layers(model, layers) -> list[int]:
    """`layers` as a sorted list of distinct ints, each a valid layer index of `model`."""
    count = len(decoder_layers(model))
    bad = [layer for layer in layers if not isinstance(layer, int) or isinstance(layer, bool)
           or not 0 <= layer < count]
    if bad:
        raise UsageError(f"layers {bad} are not layer indices of this {count}-layer model; use 0..{count - 1}")
    return sorted(set(layers))


def mlp_parameter_names(model, layers) -> list[str]:
    """Full parameter names (as `model.named_parameters()` gives them) of the MLPs of `layers`: what trains when
    only the MLP weights of those layers may change."""
    wanted = {id(p) for layer in check_layers(model, layers) for p in layer_module(model, layer, "mlp").parameters()}
    return [name for name, param in model.named_parameters() if id(param) in wanted]
