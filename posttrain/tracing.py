"""Causal tracing, ROME-style (Meng et al. 2022; docs/methods.md §5.1): which layers of a causal LM recall a fact.

For each fact (subject, prompt, answer), with the answer's first token as the target:
1. a clean run records every layer's hidden state (decoder-layer output) and MLP and attention outputs;
2. `num_noisy` corrupted copies add Gaussian noise of std `noise_factor` x sigma to the subject tokens' embeddings;
3. for each (token, layer) a corrupted run gets back the clean hidden state of that layer at that token (`hidden`),
   or the clean MLP / attention outputs at that token in a window of `window` layers around it (`mlp`, `attn`);
4. the indirect effect is P_restored(answer) - P_corrupted(answer), averaged over the noisy copies and then over
   the facts the model answers right (greedy first token); other facts are recorded but not restored.

Sigma (`noise_std_source`): `subjects` (default, as ROME) is the std of all elements of the embeddings of the
distinct subjects' tokens, as they are tokenised inside the prompts traced; `vocabulary` is the std of the whole
embedding matrix. Every restoration of one fact sees the same noise, drawn from a generator seeded by
(`seed`, fact index). Restorations are batched (`batch_size` corrupted rows per forward pass).

Output folder (see `posttrain.tracing_report` for the tables):
- `trace.json`, written atomically, schema 1; `unlearn` with `layers: auto` reads `suggested_layers`:
  {"schema": 1, "model": str, "num_layers": int, "settings": {TraceConfig fields},
   "noise_std": sigma, "noise_scale": noise_factor * sigma, "num_facts": int, "num_known": int,
   "p_clean": float, "p_corrupted": float,            # means over the known facts
   "positions": ["first_subject", "middle_subject", "last_subject", "first_subsequent", "further", "last"],
   "layers": [0, ..., num_layers - 1],
   "effects": {kind: {"effect": [6 rows of num_layers floats, or null where no fact has that position class],
                      "counts": [facts contributing to each row]}},
   "suggested_layers": [int, ...],                    # [] when no fact is known or mlp was not traced
   "suggestion": {"kind": "mlp", "position": "last_subject", "min_share": float, "share": float}}
- `trace_<kind>.png`: heatmaps; `facts.jsonl`: one record per fact (a rerun resumes); `settings.json`: the model,
  facts and settings the records depend on (a rerun with others into the same folder is refused).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from posttrain.errors import UsageError
from posttrain.model_layout import decoder_layers, embedding_module, layer_module

KINDS = ("hidden", "mlp", "attn")
NOISE_STD_SOURCES = ("subjects", "vocabulary")
FACT_COLUMNS = ("subject", "prompt", "answer")


@dataclass(frozen=True)
class TraceConfig:
    """Settings of a trace (docs/methods.md §5.1); the defaults are ROME's and the paper's."""

    noise_factor: float = 3.0
    num_noisy: int = 10
    window: int = 10
    kinds: tuple[str, ...] = KINDS
    noise_std_source: str = "subjects"
    min_effect_share: float = 0.5  # suggested layers: the smallest contiguous set holding this share of the effect
    num_facts: int | None = None
    seed: int = 0
    batch_size: int = 256  # corrupted rows per forward pass: speed and memory only

    def __post_init__(self):
        unknown = [kind for kind in self.kinds if kind not in KINDS]
        if unknown or not self.kinds:
            raise UsageError(f"unknown trace kind(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(KINDS)}")
        if self.noise_std_source not in NOISE_STD_SOURCES:
            raise UsageError(f"noise_std_source {self.noise_std_source!r} is unknown; choose subjects or vocabulary")
        for name in ("num_noisy", "window", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if not self.noise_factor > 0:
            raise UsageError(f"noise_factor must be positive (got {self.noise_factor})")
        if not 0 < self.min_effect_share <= 1:
            raise UsageError(f"min_effect_share must be in (0, 1] (got {self.min_effect_share})")
        if self.num_facts is not None and self.num_facts < 1:
            raise UsageError(f"num_facts must be at least 1 (got {self.num_facts})")


@dataclass(frozen=True)
class TracedFact:
    """A fact as token ids: the prompt (plus any whitespace-only tokens before the answer), the subject's token
    range [start, end), and the answer's first token."""

    ids: tuple[int, ...]
    subject: tuple[int, int]
    answer_id: int


def load_facts(source: str, split: str = "train", num_facts: int | None = None) -> list[dict]:
    """Rows with string `subject`, `prompt` and `answer` from a JSON-lines file, a `pg:` spec or a hub id."""
    from posttrain.data.loading import check_dataset_path, load_any_dataset

    check_dataset_path(source, "--facts")
    rows = load_any_dataset(source, split, num_examples=num_facts).to_list()
    for index, row in enumerate(rows):
        bad = [key for key in FACT_COLUMNS if not isinstance(row.get(key), str) or not row[key].strip()]
        if bad:
            raise UsageError(f"facts {source!r} row {index}: {', '.join(bad)} must be non-empty text (each fact "
                             f"needs {', '.join(FACT_COLUMNS)})")
    return rows


def tokenize_fact(tokenizer, fact: dict, index: int) -> TracedFact:
    """Token ids, subject range and target of `fact`. The answer follows the prompt after one space (unless
    either side already has it); whitespace-only tokens before the answer's text join the prompt, so the target is
    the first token that carries answer text."""
    prompt, subject, answer = fact["prompt"], fact["subject"], fact["answer"]
    start = prompt.find(subject)
    if start < 0:
        raise UsageError(f"fact {index}: subject {subject!r} does not occur in its prompt {prompt!r}")
    try:
        encoded = tokenizer(prompt, return_offsets_mapping=True)
    except NotImplementedError:
        raise UsageError("tracing needs a fast tokenizer (one with offset mappings) to find the subject tokens") \
            from None
    ids, end = list(encoded["input_ids"]), start + len(subject)
    inside = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < end and b > start]
    separator = "" if prompt[-1:].isspace() or answer[:1].isspace() else " "
    full = list(tokenizer(prompt + separator + answer)["input_ids"])
    if full[:len(ids)] != ids or len(full) == len(ids):
        raise UsageError(f"fact {index}: the tokenised prompt {prompt!r} is not a prefix of prompt + answer; "
                         "end the prompt where the answer's first token starts")
    target = len(ids)
    while target < len(full) - 1 and not tokenizer.decode([full[target]]).strip():
        target += 1
    return TracedFact(tuple(full[:target]), (inside[0], inside[-1] + 1), full[target])


def embedding_std(model, facts: list[TracedFact], source: str = "subjects") -> float:
    """Sigma of the noise rule: the std of the subject-token embeddings, or of the whole embedding matrix."""
    import torch

    embed = embedding_module(model)
    if source == "vocabulary":
        ids = [range(start, min(start + 4096, embed.num_embeddings))
               for start in range(0, embed.num_embeddings, 4096)]  # in chunks: a large vocabulary in float64 is GBs
    else:
        ids = sorted({fact.ids[fact.subject[0]:fact.subject[1]] for fact in facts})
    count = total = squares = 0.0
    with torch.no_grad():
        for chunk in ids:  # through the module, so an embedding that scales its output is measured as noised
            values = embed(torch.tensor(list(chunk), device=embed.weight.device)).double()
            count += values.numel()
            total += values.sum().item()
            squares += values.square().sum().item()
    return math.sqrt((squares - total * total / count) / (count - 1))


def noise_bank(fact: TracedFact, fact_index: int, hidden_size: int, scale: float, config: TraceConfig):
    """[num_noisy, subject tokens, hidden] Gaussian noise of std `scale`, the same for every run of one fact."""
    import torch

    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + fact_index)
    length = fact.subject[1] - fact.subject[0]
    return torch.randn(config.num_noisy, length, hidden_size, generator=generator) * scale


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _with_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


@contextlib.contextmanager
def _hooks(pairs):
    handles = [module.register_forward_hook(hook) for module, hook in pairs]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _forward(model, ids):
    """P(next token) at the last position, in float32, for a batch of equal-length rows."""
    return model(input_ids=ids, use_cache=False).logits[:, -1].float().softmax(-1)


def clean_run(model, fact: TracedFact, kinds) -> tuple:
    """(next-token probabilities [vocab], {kind: [clean output [tokens, hidden] of each layer]})."""
    import torch

    num_layers = len(decoder_layers(model))
    clean = {kind: [None] * num_layers for kind in kinds}

    def keep(kind, layer):
        def hook(module, inputs, output):
            clean[kind][layer] = _first(output)[0].detach()
        return hook

    pairs = [(layer_module(model, layer, kind), keep(kind, layer)) for kind in kinds for layer in range(num_layers)]
    device = embedding_module(model).weight.device
    with torch.no_grad(), _hooks(pairs):
        probs = _forward(model, torch.tensor([fact.ids], device=device))[0]
    return probs, clean


def restored_probs(model, fact: TracedFact, noise, clean: list, kind: str, masks) -> list[float]:
    """P(answer) of the corrupted run, averaged over the noisy copies, for each restoration in `masks`
    ([n, layers, tokens] booleans: which clean `kind` outputs to put back)."""
    import torch

    device = embedding_module(model).weight.device
    copies = noise.shape[0]
    rows = masks.shape[0] * copies
    start, end = fact.subject
    tiled_noise = noise.repeat(masks.shape[0], 1, 1).to(device)  # row c * copies + k gets noisy copy k

    def corrupt(module, inputs, output):
        output = output.clone()
        output[:, start:end] += tiled_noise.to(output.dtype)
        return output

    def restore(layer_mask, clean_out):
        def hook(module, inputs, output):
            out = _first(output)  # on this layer's device, which differs from the embedding's when sharded
            value = torch.where(layer_mask.to(out.device)[:, :, None], clean_out[None].to(out), out)
            return _with_first(output, value)
        return hook

    pairs = [(embedding_module(model), corrupt)]
    for layer in range(masks.shape[1]):
        if masks[:, layer].any():
            layer_mask = masks[:, layer].repeat_interleave(copies, 0)
            pairs.append((layer_module(model, layer, kind), restore(layer_mask, clean[layer])))
    ids = torch.tensor([fact.ids], device=device).expand(rows, -1)
    with torch.no_grad(), _hooks(pairs):
        probs = _forward(model, ids)[:, fact.answer_id]
    return probs.view(-1, copies).mean(1).tolist()


def window_layers(kind: str, layer: int, num_layers: int, window: int) -> range:
    """The layers restored for (kind, layer): the layer itself for `hidden`, else `window` layers around it
    (ROME: layer - window // 2 up to layer + ceil(window / 2), clipped to the model)."""
    if kind == "hidden":
        return range(layer, layer + 1)
    return range(max(0, layer - window // 2), min(num_layers, layer - (-window // 2)))


def restoration_masks(kind: str, num_tokens: int, num_layers: int, window: int):
    """[tokens * layers, layers, tokens] booleans; entry t * layers + l restores (kind, token t, layer l)."""
    import torch

    masks = torch.zeros(num_tokens, num_layers, num_layers, num_tokens, dtype=torch.bool)
    for token in range(num_tokens):
        for layer in range(num_layers):
            masks[token, layer, window_layers(kind, layer, num_layers, window), token] = True
    return masks.view(num_tokens * num_layers, num_layers, num_tokens)


def trace_fact(model, fact: TracedFact, noise, config: TraceConfig) -> dict:
    """p_clean, the greedy prediction and, for a fact the model answers right, p_corrupted and per kind the
    [tokens][layers] table of restored probabilities."""
    import torch

    num_layers = len(decoder_layers(model))
    probs, clean = clean_run(model, fact, config.kinds)
    predicted = int(probs.argmax())
    record = {"p_clean": probs[fact.answer_id].item(), "predicted": predicted, "correct": predicted == fact.answer_id}
    if not record["correct"]:
        return record
    nothing = torch.zeros(1, num_layers, len(fact.ids), dtype=torch.bool)
    record["p_corrupted"] = restored_probs(model, fact, noise, clean[config.kinds[0]], config.kinds[0], nothing)[0]
    chunk = max(1, config.batch_size // config.num_noisy)
    for kind in config.kinds:
        masks = restoration_masks(kind, len(fact.ids), num_layers, config.window)
        flat = [p for i in range(0, len(masks), chunk)
                for p in restored_probs(model, fact, noise, clean[kind], kind, masks[i:i + chunk])]
        record[kind] = [flat[t * num_layers:(t + 1) * num_layers] for t in range(len(fact.ids))]
    return record


def _settings(model_name: str, facts: list[dict], config: TraceConfig) -> dict:
    """What the per-fact results depend on: the model, the facts and the settings that shape them (not `batch_size`
    or `min_effect_share`)."""
    import hashlib
    import json

    rows = json.dumps([[fact[key] for key in FACT_COLUMNS] for fact in facts])
    shaping = {key: value for key, value in asdict(config).items() if key not in ("batch_size", "min_effect_share")}
    return {"model": model_name, "facts_sha256": hashlib.sha256(rows.encode()).hexdigest(), **shaping,
            "kinds": list(config.kinds)}


def prepare_trace(tokenizer, facts: list[dict], output_dir, config: TraceConfig, model_name: str) -> list[TracedFact]:
    """The first `num_facts` facts tokenised, once `output_dir` is known to hold no trace with other settings (a
    rerun resumes only the same trace). Needs no model and writes nothing, so the CLI calls it before loading one."""
    from posttrain.io import read_json

    facts = facts[:config.num_facts] if config.num_facts else facts
    traced = [tokenize_fact(tokenizer, fact, index) for index, fact in enumerate(facts)]
    path = Path(output_dir) / "settings.json"
    if path.exists() and read_json(path) != _settings(model_name, facts, config):
        raise UsageError(f"{output_dir} holds a trace with other settings ({path}); pass another --output or "
                         "delete it")
    return traced


def run_trace(model, tokenizer, facts: list[dict], output_dir, config: TraceConfig, model_name: str) -> dict:
    """Trace `facts` (the first `num_facts`), resuming from `facts.jsonl`; write trace.json and the heatmaps."""
    from tqdm.auto import tqdm

    from posttrain.console import is_silent
    from posttrain.io import ResumableJsonl, atomic_write_json
    from posttrain.tracing_report import write_outputs

    output = Path(output_dir)
    num_layers = len(decoder_layers(model))  # an unknown family fails here, before the output folder exists
    traced = prepare_trace(tokenizer, facts, output, config, model_name)
    facts = facts[:len(traced)]
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / "settings.json", _settings(model_name, facts, config))
    model.eval()
    sigma = embedding_std(model, traced, config.noise_std_source)
    hidden_size = embedding_module(model).weight.shape[1]
    results = ResumableJsonl(output / "facts.jsonl", key=lambda record: record["index"])
    for index, (fact, tokens) in enumerate(tqdm(list(zip(facts, traced)), desc="trace", disable=is_silent())):
        if index in results.done:
            continue
        noise = noise_bank(tokens, index, hidden_size, config.noise_factor * sigma, config)
        results.append({"index": index, **{key: fact[key] for key in FACT_COLUMNS},
                        "tokens": [tokenizer.decode([i]) for i in tokens.ids], "subject_range": list(tokens.subject),
                        **trace_fact(model, tokens, noise, config)})
    records = [results.done[index] for index in range(len(facts))]
    return write_outputs(output, records, config, model_name, num_layers, sigma)
