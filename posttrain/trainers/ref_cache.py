"""Reference log-probs computed once and reused from disk by every DPO-family trainer.

The reference model of DPO, RPO and their relatives is frozen, so its log-probs for a training set are a pure
function of (reference weights, tokenized data, truncation settings). `ReferenceLogpsCacheMixin` stores them in
`<ref_logps_cache_dir>/<key>.safetensors`, keyed by a SHA-256 over exactly those inputs, so a second run, a resumed
run, or another method on the same data skips the reference forward pass entirely and never loads a second model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE_FORMAT = 1
# Settings that change which tokens are scored or how their log-probs are summed.
KEY_SETTINGS = ("max_length", "truncation_mode", "padding_free", "ld_alpha")
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def default_cache_dir() -> str:
    return str(Path(os.environ.get("POSTTRAIN_CACHE", Path.home() / ".cache" / "posttrain")) / "ref_logps")


def model_fingerprint(model, frozen_only: bool = False) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, values). ZeRO-3 partitions parameters across
    processes, so each one is gathered in turn; all processes must call this together. `frozen_only` skips
    trainable parameters (a fresh LoRA adapter, which the adapter-disabled reference never uses)."""
    import torch

    digest = hashlib.sha256()
    parameters = [(n, p) for n, p in model.named_parameters() if not (frozen_only and p.requires_grad)]
    named = sorted([*parameters, *model.named_buffers()], key=lambda item: item[0])
    for name, tensor in named:
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


def tokens_fingerprint(dataset) -> str:
    """SHA-256 over the tokenized prompt/chosen/rejected ids, row by row (captures tokenizer, template and data)."""
    import pyarrow.compute as pc

    table = dataset.select_columns(list(TOKEN_COLUMNS)).with_format("arrow")[:]
    digest = hashlib.sha256(str(table.num_rows).encode())
    for column in TOKEN_COLUMNS:
        ids = table.column(column).combine_chunks()
        digest.update(column.encode())
        digest.update(pc.list_value_length(ids).to_numpy(zero_copy_only=False).tobytes())
        digest.update(pc.list_flatten(ids).cast("int64").to_numpy(zero_copy_only=False).tobytes())
    return digest.hexdigest()


def cache_key(model_hash: str, dataset, args) -> str:
    settings = {name: getattr(args, name, None) for name in KEY_SETTINGS}
    payload = json.dumps({"format": CACHE_FORMAT, "model": model_hash, "tokens": tokens_fingerprint(dataset),
                          "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def save_ref_logps(path: Path, chosen, rejected, metadata: dict[str, str]) -> None:
    """Atomic write: a killed process leaves either no file or a complete one."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file({"ref_chosen_logps": chosen.contiguous(), "ref_rejected_logps": rejected.contiguous()}, str(partial),
              metadata=metadata)
    os.replace(partial, path)


def load_ref_logps(path: Path):
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return tensors["ref_chosen_logps"], tensors["ref_rejected_logps"]


def with_ref_columns(dataset, chosen, rejected):
    from datasets import Dataset, Features, Value, concatenate_datasets

    features = Features({"ref_chosen_logps": Value("float32"), "ref_rejected_logps": Value("float32")})
    columns = Dataset.from_dict({"ref_chosen_logps": chosen.float().numpy(),
                                 "ref_rejected_logps": rejected.float().numpy()}, features=features)
    return concatenate_datasets([dataset.remove_columns([c for c in columns.column_names
                                                         if c in dataset.column_names]), columns], axis=1)


class ReferenceLogpsCacheMixin:
    """Mix in before `trl.DPOTrainer`: replaces its per-process, temporary-file precompute with a persistent cache.

    Used when `precompute_ref_log_probs` is on (the posttrain default) and `ref_logps_cache_dir` is set.
    """

    reference_forward_batches = 0  # how many batches went through the reference forward (0 on a cache hit)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        cache_dir = getattr(self.args, "ref_logps_cache_dir", None)
        if not cache_dir:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        from posttrain.errors import UsageError

        if len(dataset) == 0:
            raise UsageError(f"no {name} example fits max_length={self.args.max_length} (every prompt alone is "
                             f"longer); raise max_length")
        key = self._broadcast(cache_key(self._reference_fingerprint(), dataset, self.args))
        path = Path(cache_dir) / f"{key}.safetensors"
        # Rank 0 reads and sends: other nodes may not share the cache's file system.
        loaded = self._broadcast(load_ref_logps(path) if self.accelerator.is_main_process and path.exists() else None)
        if loaded is not None and len(loaded[0]) == len(dataset):
            self.accelerator.print(f"posttrain: reference log-probs for {name} ({len(dataset)} rows) loaded from "
                                   f"cache {path}; no reference forward pass")
            return with_ref_columns(dataset, *loaded)
        chosen, rejected = self._reference_forward(dataset, name, batch_size)
        if self.accelerator.is_main_process:
            save_ref_logps(path, chosen, rejected, {"model": str(self.model.config._name_or_path), "split": name,
                                                    "rows": str(len(dataset))})
        self.accelerator.print(f"posttrain: reference log-probs for {name} ({len(dataset)} rows) computed and "
                               f"cached at {path}")
        self.accelerator.wait_for_everyone()
        return with_ref_columns(dataset, chosen, rejected)

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
            partitioned = any(hasattr(p, "ds_id") for p in model.parameters())
            # The reference of a new LoRA adapter is the adapter-disabled base: its random init must not change the key.
            disabled_adapter = self.ref_model is None and is_peft_model(model) and "ref" not in model.peft_config
            # TRL already hashed the unpartitioned model; under ZeRO-3 its hash would only see empty shards.
            trl_hash = getattr(self, "_precompute_model_hash", None)
            self._reference_hash = trl_hash if trl_hash and not (partitioned or disabled_adapter) \
                else model_fingerprint(model, frozen_only=disabled_adapter)
        return self._reference_hash

    def _reference_forward(self, dataset, name: str, batch_size: int):
        """One pass of the frozen reference (the initial policy, or the adapter-disabled base under PEFT)."""
        import torch
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm
        from trl.models import prepare_deepspeed

        loader = self.accelerator.prepare(DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator,
                                                     shuffle=False, num_workers=self.args.dataloader_num_workers))
        model = self.ref_model if self.ref_model is not None else self.model
        if self.ref_model is None and self.is_deepspeed_enabled:  # parameters are still unplaced/sharded here
            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        chosen, rejected = [], []
        for batch in tqdm(loader, desc=f"reference log-probs ({name})",
                          disable=not self.accelerator.is_local_main_process):
            batch_chosen, batch_rejected = self.accelerator.gather_for_metrics(self.compute_ref_log_probs(model, batch))
            chosen.append(batch_chosen.cpu())
            rejected.append(batch_rejected.cpu())
            self.reference_forward_batches += 1
        return torch.cat(chosen), torch.cat(rejected)
