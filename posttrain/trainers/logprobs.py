"""The sequence log-prob engine of the DPO family: N named completions per example, scored in ONE forward pass.

A preference method names the sequences it needs per example, each a (prompt column, completion column) pair of
token ids: DPO and RPO need `chosen` and `rejected` after one prompt; SRPO needs six, some after a revision prompt.
`SequenceCollator` lays a batch of B examples out as N blocks of B rows, `[name_0 rows; name_1 rows; ...]` (DPO's
`[chosen; rejected]`), and `sequence_logps` runs the model once over all N*B rows and returns, per name, the summed
completion log-probs, the per-token log-probs and their mask (docs/methods.md §0: sums over completion tokens, the
prompt masked). Precomputed log-prob columns (`<prefix>_<name>_logps`, e.g. `ref_chosen_logps`) travel with the
batch. The forward uses TRL's fused LM head (`add_fused_lm_head`), so no (batch, length, vocabulary) logits exist;
with a chunk size, posttrain's chunked head scores only the completion tokens, a chunk at a time (`chunked_logps`).

With `padding_free`, the collator packs all N*B sequences into ONE row with position ids restarting per sequence and
no attention mask: transformers then confines attention to each sequence (a block-diagonal mask for eager/sdpa/flex,
varlen kernels for flash attention), and `sequence_logps` unpacks the log-probs into the padded layout, so
everything downstream is unchanged (docs/methods.md §9).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

TRUNCATION_MODES = ("keep_start", "keep_end")


@dataclass(frozen=True)
class Sequence:
    """One scored sequence per example: `prompt` token ids followed by `completion` token ids (dataset columns)."""

    name: str
    prompt: str
    completion: str


PAIR = (Sequence("chosen", "prompt_ids", "chosen_ids"), Sequence("rejected", "prompt_ids", "rejected_ids"))


def token_columns(sequences) -> list[str]:
    """The dataset's token-id columns the sequences read, each once, in a stable order."""
    return list(dict.fromkeys(column for s in sequences for column in (s.prompt, s.completion)))


def logps_column(prefix: str, name: str) -> str:
    return f"{prefix}_{name}_logps"


def _pad(rows: list[list[int]], value: int, multiple: int | None) -> torch.Tensor:
    padded = pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True, padding_value=value)
    if multiple and padded.size(1) % multiple:
        extra = multiple - padded.size(1) % multiple
        padded = torch.nn.functional.pad(padded, (0, extra), value=value)
    return padded


def pack(ids: list[list[int]], completion: list[list[int]], pad_token_id: int, multiple: int | None) -> dict:
    """The sequences as one (1, T) row: `input_ids`, `position_ids` restarting at 0 per sequence, `completion_mask`
    with each sequence's first token cleared (its position would otherwise score it as the previous sequence's
    next token; the padded layout never scores a first token either) and `sequence_lengths` (R,). With `multiple`,
    the row ends in a pad-only sequence that nothing scores."""
    total = sum(len(r) for r in ids)
    tail = (multiple - total % multiple) % multiple if multiple else 0
    row = [token for r in ids for token in r] + [pad_token_id] * tail
    positions = [p for r in ids for p in range(len(r))] + list(range(tail))
    mask = [flag if i else 0 for c in completion for i, flag in enumerate(c)] + [0] * tail
    return {"input_ids": torch.tensor([row]), "position_ids": torch.tensor([positions]),
            "completion_mask": torch.tensor([mask]), "sequence_lengths": torch.tensor([len(r) for r in ids])}


def unpack(packed: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(1, T-1) next-token values of a packed row -> (R, max length - 1), one row per sequence, zero beyond each
    sequence's own next-token positions: the layout of the padded path."""
    starts = torch.cumsum(lengths, 0) - lengths
    columns = torch.arange(int(lengths.max()) - 1, device=packed.device)
    index = (starts[:, None] + columns).clamp(max=packed.size(1) - 1)
    values = packed[0, index]
    return values.masked_fill(columns >= (lengths[:, None] - 1), 0)


def token_count(batch: dict) -> torch.Tensor:
    """The real (non-pad) tokens of a padded or packed batch."""
    if "sequence_lengths" in batch:
        return batch["sequence_lengths"].sum()
    return batch["attention_mask"].sum()


@dataclass
class SequenceCollator:
    """Examples -> `input_ids`, `attention_mask`, `completion_mask` of shape (N*B, L), right-padded, in name blocks.

    Each prompt+completion is truncated to `max_length` on its own (`keep_start` keeps the beginning, `keep_end` the
    end), as TRL's preference collator does, so for `PAIR` the batch equals TRL's. Float `*_logps` fields of the
    examples become (B,) tensors. With `padding_free` the same sequences are packed into one row instead: see
    `pack`.
    """

    pad_token_id: int
    sequences: tuple[Sequence, ...] = PAIR
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None
    padding_free: bool = False

    def __post_init__(self):
        if self.truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {self.truncation_mode!r}")

    def _truncate(self, ids: list) -> list:
        if self.max_length is None:
            return ids
        return ids[:self.max_length] if self.truncation_mode == "keep_start" else ids[-self.max_length:]

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids, completion = [], []
        for sequence in self.sequences:
            for example in examples:
                prompt, answer = list(example[sequence.prompt]), list(example[sequence.completion])
                ids.append(self._truncate(prompt + answer))
                completion.append(self._truncate([0] * len(prompt) + [1] * len(answer)))
        if self.padding_free:
            batch = pack(ids, completion, self.pad_token_id, self.pad_to_multiple_of)
        else:
            batch = {"input_ids": _pad(ids, self.pad_token_id, self.pad_to_multiple_of),
                     "attention_mask": _pad([[1] * len(r) for r in ids], 0, self.pad_to_multiple_of),
                     "completion_mask": _pad(completion, 0, self.pad_to_multiple_of)}
        for key in examples[0]:
            if key.endswith("_logps"):
                batch[key] = torch.tensor([example[key] for example in examples])
        return batch


@dataclass
class SequenceLogps:
    """Per name: `logps[name]` (B,) summed completion log-probs; `token_logps[name]` and `masks[name]` (B, L-1) for
    the next-token positions. `outputs` is the fused forward's output (entropy, top-1 hits) for metrics."""

    logps: dict[str, torch.Tensor]
    token_logps: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    outputs: object = None


MODEL_INPUTS_EXCLUDED = ("completion_mask", "sequence_lengths")


def model_inputs(batch: dict) -> dict:
    """The batch entries the model takes (not the completion mask or precomputed log-prob columns)."""
    return {k: v for k, v in batch.items() if k not in MODEL_INPUTS_EXCLUDED and not k.endswith("_logps")}


def _unpacked_outputs(outputs, lengths: torch.Tensor):
    """The fused head's per-token fields of a packed row in the padded layout (for the engine's metrics)."""
    fields = {name: unpack(getattr(outputs, name), lengths) for name in ("log_probs", "entropy", "is_top1")
              if getattr(outputs, name, None) is not None}
    return type(outputs)(**{**dict(outputs), **fields})


def sequence_logps(model, batch: dict, names, chunk_size: int | None = None,
                   router_logits: bool = False) -> SequenceLogps:
    """One forward of `model` (patched by TRL's `add_fused_lm_head`) over the N*B rows of a `SequenceCollator` batch.

    Log-probs are for the next-token positions, so they and the masks have length L-1; a token's log-prob is zero
    where it is not a completion token, hence `logps` is the plain sum. `chunk_size` scores the completion tokens
    that many at a time (`chunked_logps`); a packed batch comes back in the padded layout. `router_logits` asks a
    MoE model for its router logits, so `outputs.aux_loss` holds its load-balancing loss (docs/methods.md §9).
    """
    completion_mask = batch["completion_mask"]
    labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
    head = {"fused_lm_head": True}
    if chunk_size:
        from posttrain.trainers.chunked_logps import add_chunked_lm_head

        add_chunked_lm_head(model)
        head = {"logps_chunk_size": chunk_size}
    if router_logits:
        # A packed row has no attention mask, so the load-balancing loss averages over every token of the row: the
        # real tokens the padded batch's mask keeps (equal values), plus the pad-only tail `pad_to_multiple_of` adds.
        head["output_router_logits"] = True
    outputs = model(**model_inputs(batch), labels=labels, use_cache=False, **head)
    mask = completion_mask[:, 1:]
    # Prompt-learning PEFT prepends virtual tokens to the outputs: keep the positions of the real tokens.
    token_logps = outputs.log_probs[:, -mask.size(1):]
    if "sequence_lengths" in batch:
        lengths = batch["sequence_lengths"]
        token_logps, mask, outputs = unpack(token_logps, lengths), unpack(mask, lengths), _unpacked_outputs(
            outputs, lengths)
    names = list(names)
    split_tokens, split_masks = token_logps.chunk(len(names)), mask.chunk(len(names))
    return SequenceLogps(logps={n: t.sum(dim=1) for n, t in zip(names, split_tokens)},
                         token_logps=dict(zip(names, split_tokens)),
                         masks={n: m.to(token_logps.dtype) for n, m in zip(names, split_masks)}, outputs=outputs)


def frozen_sequence_logps(model, batch: dict, names, peft_model=None,
                          chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """Summed log-probs without gradient. With `peft_model` (the unwrapped policy under LoRA) the adapter is
    switched off (or the `ref` adapter used, when one was loaded), so the frozen base is what scores."""
    from trl.trainer.utils import use_adapter

    adapter = contextlib.nullcontext()
    if peft_model is not None:
        adapter = use_adapter(peft_model, adapter_name="ref" if "ref" in peft_model.peft_config else None)
    with torch.no_grad(), adapter:
        return sequence_logps(model, batch, names, chunk_size).logps
