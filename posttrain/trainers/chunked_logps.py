"""Chunked completion log-probs: the LM head applied to the completion tokens only, a chunk of tokens at a time
(docs/methods.md §9).

TRL's fused LM head (`add_fused_lm_head`, the engine's plain path) already avoids keeping `[tokens x vocabulary]`
logits for backward, but on devices without Triton it scores every position, prompt and padding included, in tiles
of up to 4096 tokens by 32768 vocabulary columns, so one forward still holds several tile-sized temporaries.
`add_chunked_lm_head` wraps that head: called with `logps_chunk_size=k`, the model runs its backbone, keeps the
hidden states of the labelled positions (the completion tokens) and hands them to TRL's `ChunkedLogProbFunction`
`k` tokens at a time. Each chunk's logits are recomputed in backward, so the peak is one `[k x vocabulary]` tile
whatever the batch, and the log-probs and gradients are those of the plain path (exact in fp32). A MoE model's
router load-balancing loss comes back as `aux_loss`, as from TRL's fused head.
"""

from __future__ import annotations

import functools
import types

import torch

VOCAB_TILE = 32768  # vocabulary columns per projection tile within a chunk (TRL's own default)
PER_TOKEN_FIELDS = ("log_probs", "entropy", "is_top1")  # what the engine's loss and metrics read
LOGIT_SCALE_SETTINGS = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
_WRAPPED = "_posttrain_chunked_lm_head"


def causal_lm(model):
    """The causal LM module under the DeepSpeed/DDP wrappers and PEFT: the object whose forward the heads patch."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported_logit_transform(config) -> str | None:
    """The config setting that scales the logits (the chunked path does not), or None. Softcapping is supported."""
    text_config = config.get_text_config()
    for name in LOGIT_SCALE_SETTINGS:
        if getattr(text_config, name, None) not in (None, 1, 1.0):
            return name
    return None


def chunked_token_logps(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        targets: torch.Tensor, chunk_size: int, softcap: float | None = None) -> tuple:
    """(log-probs, entropy, is_top1) of `targets` (n,) under the logits `hidden @ weight.T + bias` for hidden (n, H),
    computed `chunk_size` tokens at a time with TRL's `ChunkedLogProbFunction` (recomputed in backward)."""
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    parts = []
    with maybe_gather_lm_head_ctx(weight, bias):
        for start in range(0, max(len(targets), 1), chunk_size):
            end = start + chunk_size
            log_probs, entropy, _, _, is_top1 = ChunkedLogProbFunction.apply(
                hidden[start:end], weight, bias, targets[start:end], 1.0, min(VOCAB_TILE, weight.size(0)), softcap,
                1.0, PER_TOKEN_FIELDS)
            parts.append((log_probs, entropy, is_top1))
    return tuple(torch.cat(field) for field in zip(*parts))


def _chunked_forward(model, chunk_size: int, *args, labels=None, **kwargs):
    """The backbone, then the completion positions' log-probs in chunks: a `FusedCausalLMOutput` whose per-token
    fields are zero where the label is -100, as TRL's fused head returns them."""
    from trl.trainer.utils import FusedCausalLMOutput

    kwargs.pop("fused_lm_head", None)
    kwargs["use_cache"] = False
    text_config = model.config.get_text_config()
    if getattr(text_config, "output_router_logits", False):  # as TRL's fused head and the model's own forward do
        kwargs.setdefault("output_router_logits", True)
    backbone = model.base_model(*args, **kwargs)
    hidden = backbone.last_hidden_state[:, :-1]
    head = model.get_output_embeddings()
    labels = labels[:, 1:].to(head.weight.device)
    mask = labels != -100
    softcap = getattr(text_config, "final_logit_softcapping", None)
    fields = chunked_token_logps(hidden.to(head.weight.device)[mask], head.weight, head.bias, labels[mask],
                                 chunk_size, softcap)
    # masked_scatter keeps an all-prompt batch connected to the graph (a differentiable zero)
    log_probs, entropy, is_top1 = (x.new_zeros(mask.shape).masked_scatter(mask, x) for x in fields)
    loss = -log_probs.sum() / mask.sum().clamp(min=1)
    aux_loss = None
    if kwargs.get("output_router_logits"):
        aux_loss = router_aux_loss(text_config, backbone.router_logits, kwargs.get("attention_mask"))
        loss = loss + getattr(text_config, "router_aux_loss_coef", 0.0) * aux_loss
    return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, is_top1=is_top1, label_mask=mask,
                               aux_loss=aux_loss)


def router_aux_loss(text_config, router_logits, attention_mask) -> torch.Tensor:
    """A MoE model's load-balancing loss, by the transformers function TRL's fused head calls (Mixtral's, which the
    MoE families share), so the chunked and plain paths give the same value."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    return load_balancing_loss_func(router_logits, text_config.num_experts, text_config.num_experts_per_tok,
                                    attention_mask)


def add_chunked_lm_head(model) -> None:
    """Let `model(..., labels=labels, logps_chunk_size=k)` score the labelled positions in chunks of k tokens; any
    other call goes to the forward already there (TRL's fused head, or the model's own). Idempotent; patches the
    causal LM under any wrapper, so it can be applied to the model as the trainer holds it."""
    model = causal_lm(model)
    if getattr(model, _WRAPPED, False):
        return
    previous = model.forward

    @functools.wraps(type(model).forward)  # keep the signature: `generate` checks its kwargs against it
    def forward(self, *args, logps_chunk_size=None, **kwargs):
        if not logps_chunk_size:
            return previous(*args, **kwargs)
        return _chunked_forward(self, logps_chunk_size, *args, **kwargs)

    model.forward = types.MethodType(forward, model)
    setattr(model, _WRAPPED, True)
