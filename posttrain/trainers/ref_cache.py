"""Frozen-model log-probs computed once and reused from disk by every DPO-family trainer: an N-way cache.

A frozen model's summed log-probs for a set of named sequences (`posttrain.trainers.logprobs.Sequence`) over a
tokenized dataset are a pure function of (model weights, token ids of the sequences' columns, sequence names,
truncation settings). `SequenceLogpsCacheMixin` stores them in `<ref_logps_cache_dir>/<key>.safetensors`, keyed by
a SHA-256 over exactly those inputs, and adds them to the dataset as `<prefix>_<name>_logps` columns. A second run,
a resumed run or another method on the same data and model skips the forward pass and never holds a second model.

The reference (prefix `ref`) is scored this way before training, as TRL's `precompute_ref_log_probs` does. Any other
frozen model can be scored the same way with `trainer.add_logps_columns(dataset, prefix, model=...)`, or from a
saved checkpoint with `trainer.add_logps_columns(dataset, "prev", model=trainer.load_scoring_model(path))`: that is
how an iterative method (INPO) scores its pairs under the previous iterate. Two models give two cache entries.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from posttrain.console import is_silent

CACHE_FORMAT = 4  # 3: the model hash is over canonical names (LoRA and full fine-tuning share entries); 4: no
# padding_free in the key
# Settings that change which tokens are scored or how their log-probs are summed. Not the batch layout: padded and
# packed (`padding_free`) batches, like any batch size, give the same log-probs (exact in fp32, docs/methods.md §9),
# so they share an entry.
KEY_SETTINGS = ("max_length", "truncation_mode", "ld_alpha")


def default_cache_dir() -> str:
    return str(Path(os.environ.get("POSTTRAIN_CACHE", Path.home() / ".cache" / "posttrain")) / "ref_logps")


def check_cache_dir(cache_dir: str, setting: str = "ref_logps_cache_dir") -> None:
    """A one-line UsageError when `cache_dir` cannot hold cache files: it, or its nearest existing parent, is a file
    or a folder this user cannot write. `setting` names what the user set (the recipe key, or $POSTTRAIN_CACHE)."""
    from posttrain.errors import UsageError

    path = Path(cache_dir).expanduser()
    existing = next(p for p in [path, *path.parents] if p.exists())
    problem = "is not a folder" if not existing.is_dir() else \
        "is not writable" if not os.access(existing, os.W_OK | os.X_OK) else None
    if problem:
        raise UsageError(f"{setting} cannot hold the reference log-prob cache {cache_dir!r} ({existing} {problem}); "
                         f"point it at a writable folder, or set ref_logps_cache_dir '' to turn the disk cache off")


def canonical_name(name: str) -> str:
    """A parameter's name in the plain base model: without the wrappers' prefixes (DeepSpeed/DDP `module.`, PEFT
    `base_model.model.`) and PEFT's `.base_layer`/`.original_module` levels, so a LoRA model's base weights hash as
    the same model's weights do under full fine-tuning."""
    for prefix in ("module.", "base_model.model."):
        name = name.removeprefix(prefix)
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def is_adapter_tensor(name: str) -> bool:
    """Whether `name` belongs to a PEFT adapter (LoRA/DoRA weights, or a `modules_to_save` copy)."""
    return any(part.startswith("lora_") or part == "modules_to_save" for part in name.split("."))


def model_fingerprint(model, base_only: bool = False) -> str:
    """SHA-256 over every parameter and buffer (canonical name, dtype, shape, values). ZeRO-3 partitions parameters
    across processes, so each one is gathered in turn; all processes must call this together. `base_only` skips the
    adapters of a PEFT model (and anything trainable): the adapter-disabled reference never uses them."""
    import torch

    named = {canonical_name(name): tensor for name, tensor in [*model.named_parameters(), *model.named_buffers()]
             if not (base_only and (is_adapter_tensor(name) or tensor.requires_grad))}
    digest = hashlib.sha256()
    for name, tensor in sorted(named.items()):
        if hasattr(tensor, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([tensor]):
                values = tensor.data.detach().cpu()
        else:
            values = tensor.detach().cpu()
        digest.update(f"{name}:{values.dtype}:{tuple(values.shape)}".encode())
        digest.update(values.to(torch.float32).numpy().tobytes() if values.dtype.is_floating_point
                      else values.numpy().tobytes())
    return digest.hexdigest()


def tokens_fingerprint(dataset, columns: list[str]) -> str:
    """SHA-256 over the token-id `columns`, row by row (captures tokenizer, template and data)."""
    import pyarrow.compute as pc

    table = dataset.select_columns(list(columns)).with_format("arrow")[:]
    digest = hashlib.sha256(str(table.num_rows).encode())
    for column in columns:
        ids = table.column(column).combine_chunks()
        digest.update(column.encode())
        digest.update(pc.list_value_length(ids).to_numpy(zero_copy_only=False).tobytes())
        digest.update(pc.list_flatten(ids).cast("int64").to_numpy(zero_copy_only=False).tobytes())
    return digest.hexdigest()


def cache_key(model_hash: str, dataset, sequences, args) -> str:
    """The key of one model's log-probs for `sequences` over `dataset` under `args`' truncation settings."""
    from posttrain.trainers.logprobs import token_columns

    settings = {name: getattr(args, name, None) for name in KEY_SETTINGS}
    payload = json.dumps({"format": CACHE_FORMAT, "model": model_hash,
                          "tokens": tokens_fingerprint(dataset, token_columns(sequences)),
                          "sequences": [[s.name, s.prompt, s.completion] for s in sequences],
                          "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def save_logps(path: Path, logps: dict, metadata: dict[str, str]) -> None:
    """Atomic write of {sequence name: (rows,) tensor}: a killed process leaves either no file or a complete one."""
    from safetensors.torch import save_file

    from posttrain.io import restore_umask_modes

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file({name: values.contiguous() for name, values in logps.items()}, str(partial), metadata=metadata)
    restore_umask_modes(partial)  # safetensors writes 0600; the cache may be shared
    os.replace(partial, path)


def load_logps(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def read_cache_file(path: Path, names: list[str], rows: int) -> tuple[dict | None, str | None]:
    """(log-probs, None) from a sound cache file, or (None, what is wrong) for one that cannot serve `rows` rows of
    the sequences `names`: cut short, not safetensors, other names or other lengths."""
    from safetensors import SafetensorError

    try:
        logps = load_logps(path)
    except (SafetensorError, OSError) as err:
        return None, f"unreadable: {str(err).splitlines()[0]}"
    if sorted(logps) != sorted(names):
        return None, f"holds sequences {', '.join(sorted(logps)) or 'none'}, not {', '.join(sorted(names))}"
    shapes = {tuple(values.shape) for values in logps.values()}
    if shapes != {(rows,)}:
        return None, f"holds tensors of shape {', '.join(map(str, sorted(shapes)))}, not ({rows},)"
    return logps, None


def with_logps_columns(dataset, logps: dict, prefix: str):
    """`dataset` with one float32 column `<prefix>_<name>_logps` per entry of `logps` (replacing any old one)."""
    from datasets import Dataset, Features, Value, concatenate_datasets

    from posttrain.trainers.logprobs import logps_column

    columns = {logps_column(prefix, name): values.float().numpy() for name, values in logps.items()}
    table = Dataset.from_dict(columns, features=Features({c: Value("float32") for c in columns}))
    kept = dataset.remove_columns([c for c in columns if c in dataset.column_names])
    return concatenate_datasets([kept, table], axis=1)


class SequenceLogpsCacheMixin:
    """Mix in before `trl.DPOTrainer` (through posttrain's `DPOTrainer`): frozen-model log-probs for the trainer's
    `sequences`, from the persistent cache or from one pass over the data. Needs `self.sequences`, a
    `SequenceCollator` as `self.data_collator` and `self.frozen_logps(model, batch, peft_model)` (`DPOTrainer`)."""

    reference_forward_batches = 0  # batches that went through a frozen-model forward (0 on cache hits)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """TRL's precompute hook: the reference's log-probs as `ref_<name>_logps` columns."""
        from posttrain.errors import UsageError

        if len(dataset) == 0:
            raise UsageError(f"no {name} example fits max_length={self.args.max_length} (every prompt alone is "
                             f"longer); raise max_length")
        return self.add_logps_columns(dataset, "ref", split=name, batch_size=batch_size)

    def add_logps_columns(self, dataset, prefix: str, model=None, split: str = "train", batch_size: int | None = None):
        """`dataset` with `<prefix>_<name>_logps` columns holding `model`'s summed log-probs for every sequence.

        `model=None` means the reference (the initial policy, or the adapter-disabled base under LoRA). Any other
        model must already be placed for scoring (`load_scoring_model`). All processes must call this together.
        """
        batch_size = batch_size or self.args.precompute_ref_batch_size or self.args.per_device_train_batch_size
        path = self._cache_path(dataset, model)
        # Rank 0 reads and sends: other nodes may not share the cache's file system.
        loaded = None
        if path is not None:
            loaded = self._broadcast(self._read_cache(path, len(dataset)) if self.accelerator.is_main_process
                                     else None)
        what = f"{prefix} log-probs for {split} ({len(dataset)} rows, {len(self.sequences)} sequences each)"
        if loaded is not None:
            self._note(f"posttrain: {what} loaded from cache {path}; no forward pass")
            return with_logps_columns(dataset, loaded, prefix)
        logps = self._frozen_forward(dataset, split, batch_size, model)
        if path is not None:
            if self.accelerator.is_main_process:
                save_logps(path, logps, {"model": str(getattr(model or self.model, "name_or_path", "")),
                                         "split": split, "rows": str(len(dataset)), "prefix": prefix})
            self._note(f"posttrain: {what} computed and cached at {path}")
            self.accelerator.wait_for_everyone()
        return with_logps_columns(dataset, logps, prefix)

    def _note(self, message: str) -> None:
        """One line on the main process, unless a caller (the demos) asked for silence."""
        if not is_silent():
            self.accelerator.print(message)

    def _read_cache(self, path: Path, rows: int) -> dict | None:
        """The cached log-probs, or None to compute them: the file is missing, or damaged (said in one line, and
        rewritten once computed: the cache is ours, so a bad entry is recomputed rather than fatal)."""
        if not path.exists():
            return None
        logps, problem = read_cache_file(path, [s.name for s in self.sequences], rows)
        if problem:
            self.accelerator.print(f"posttrain: ignoring the damaged cache file {path} ({problem}); computing the "
                                   f"log-probs again and replacing it")
        return logps

    def _cache_path(self, dataset, model=None) -> Path | None:
        """The cache file of `model`'s (None: the reference's) log-probs over `dataset`, or None without a disk
        cache (then no fingerprint is computed: hashing a large model's weights is not free)."""
        cache_dir = getattr(self.args, "ref_logps_cache_dir", None)
        if not cache_dir:
            return None
        check_cache_dir(cache_dir)
        fingerprint = self._reference_fingerprint() if model is None else model_fingerprint(model)
        key = self._broadcast(cache_key(fingerprint, dataset, self.sequences, self.args))
        return Path(cache_dir) / f"{key}.safetensors"

    def load_scoring_model(self, path: str):
        """A saved model (e.g. the previous iterate), loaded once and placed for frozen scoring on every process
        (a DeepSpeed inference engine under ZeRO, sharded again under ZeRO-3)."""
        from trl.models import prepare_deepspeed
        from trl.trainer.utils import add_fused_lm_head

        from posttrain.models import load_causal_lm

        model = load_causal_lm(path, dtype=getattr(self.model, "dtype", None))
        add_fused_lm_head(model)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(model, self.accelerator)
        return self.accelerator.prepare_model(model.eval(), evaluation_mode=True)

    def _broadcast(self, value):
        """Rank 0's `value` on every process."""
        from accelerate.utils import broadcast_object_list

        holder = [value]
        broadcast_object_list(holder, from_process=0)
        return holder[0]

    def _reference_fingerprint(self) -> str:
        if getattr(self, "_reference_hash", None) is None:
            from accelerate.utils import is_peft_model

            model = self.ref_model if self.ref_model is not None else self.model
            # The reference of a new LoRA adapter is the adapter-disabled base: neither the adapter's random init nor
            # PEFT's names may change the key, so LoRA and full fine-tuning of one base share an entry. (TRL's
            # `_precompute_model_hash` is not reused: it hashes PEFT's state dict, adapter included.)
            disabled_adapter = self.ref_model is None and is_peft_model(model) and "ref" not in model.peft_config
            self._reference_hash = model_fingerprint(model, base_only=disabled_adapter)
        return self._reference_hash

    def _reference_scorer(self):
        """The model that scores as the reference before training, and the PEFT model whose adapter it disables."""
        from accelerate.utils import is_peft_model
        from trl.models import prepare_deepspeed

        if self.ref_model is not None:
            return self.ref_model, None
        model = self.model
        if self.is_deepspeed_enabled:  # parameters are still unplaced/sharded before training
            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        return model, (self.accelerator.unwrap_model(self.model) if is_peft_model(self.model) else None)

    def _frozen_forward(self, dataset, split: str, batch_size: int, model=None) -> dict:
        """One pass of a frozen model over `dataset`: {sequence name: (rows,) summed log-probs}."""
        import torch
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        loader = self.accelerator.prepare(DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator,
                                                     shuffle=False, num_workers=self.args.dataloader_num_workers))
        scorer, peft_model = self._reference_scorer() if model is None else (model, None)
        names = [s.name for s in self.sequences]
        parts: dict[str, list] = {name: [] for name in names}
        quiet = not self.accelerator.is_local_main_process or is_silent()
        for batch in tqdm(loader, desc=f"frozen log-probs ({split})", disable=quiet):
            logps = self.frozen_logps(scorer, batch, peft_model)
            for name, values in zip(names, self.accelerator.gather_for_metrics([logps[n] for n in names])):
                parts[name].append(values.float().cpu())
            self.reference_forward_batches += 1
        self._release_precompute_engine()
        return {name: torch.cat(values) for name, values in parts.items()}

    def _release_precompute_engine(self) -> None:
        """Remove the scoring engine's ZeRO-3 hooks from the shared module once its pass is done. Left in place, they
        fire beside the training engine's own; when the pass was a single forward, their half-recorded parameter
        trace fails the first training step (`IndexError: pop from an empty deque`)."""
        if getattr(self, "_precompute_engine", None) is not None:
            self._precompute_engine.destroy()
            self._precompute_engine = None
