"""Layer-frozen unlearning and its baselines (Agrawal & Huang 2025, "SHA256 at SemEval-2025 Task 4"; docs/methods.md
§5.2).

`UnlearnTrainer` is `trl.SFTTrainer` (prompt/completion tokenisation with the prompt masked, PEFT, the fused LM head,
logging, checkpoints) with its own loss over batches that mix forget and retain rows: one forward per batch, then
each cross-entropy is a token mean over its own rows' output tokens. `unlearn_loss` picks the objective:

- `joint`: the paper's L = -CE_forget + alpha * CE_retain, alpha = clip(a * b**dL + c, low, high) where dL is the
  retain CE's rise above its epoch-0 mean (alpha fixed during epoch 0);
- `ga`: gradient ascent, -CE_forget;  `gd`: gradient difference, -CE_forget + retain_weight * CE_retain;
- `npo`: NPO on the forget rows (reference log-probs computed once before training and cached on disk, so no second
  model is held) + retain_weight * CE_retain.

`unlearn_layers` chooses what trains: the MLP weights of listed layers (or of every layer: `all`; of the traced
layers: `auto`, from `trace_file`), or every parameter (`full`, the full-model baselines). Frozen parameters never
reach the optimizer. Forget and retain rows reach the loss through the construction hook's collator, which flags
each row's split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import trl
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from posttrain.errors import UsageError
from posttrain.losses import npo_loss, token_nll, unlearn_alpha, unlearn_joint_loss
from posttrain.trainers.logprobs import Sequence, logps_column
from posttrain.trainers.ref_cache import SequenceLogpsCacheMixin, default_cache_dir, is_adapter_tensor

UNLEARN_LOSSES = ("joint", "ga", "gd", "npo")
BASELINE_MEANS = ("batches", "examples")
LAYER_WORDS = ("all", "auto", "full")
SPLITS = ("forget", "retain")
LUME_COLUMNS = {"input": "prompt", "output": "completion"}  # SemEval-2025 Task 4 rows: id, input, output, task, split


def parse_layer_spec(spec) -> str | list[int]:
    """`unlearn_layers` as one of LAYER_WORDS or a sorted list of layer indices. Accepts a list (of ints or strings)
    or a string; numbers may be comma-separated and ranges inclusive: `0-5`, `1,3,5`, `0-2,7`."""
    items = [spec] if isinstance(spec, str | int) else list(spec)
    tokens = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if len(tokens) == 1 and tokens[0] in LAYER_WORDS:
        return tokens[0]
    layers = set()
    for token in tokens:
        start, dash, end = token.partition("-")
        if not (start.isdigit() and (not dash or end.isdigit())):
            raise ValueError(f"unlearn_layers {spec!r} is not a layer list: use indices like 0-5 or 1,3,5, or one of "
                             f"{', '.join(LAYER_WORDS)}")
        layers.update(range(int(start), int(end or start) + 1))
    if not layers:
        raise ValueError(f"unlearn_layers {spec!r} names no layer")
    return sorted(layers)


def traced_layers(trace_file: str) -> list[int]:
    """`suggested_layers` of a `posttrain trace` output (trace.json)."""
    path = Path(trace_file)
    if not path.is_file():
        raise UsageError(f"trace_file {trace_file!r} does not exist; run `posttrain trace` first or list "
                         f"unlearn_layers yourself")
    try:
        layers = json.loads(path.read_text(encoding="utf-8")).get("suggested_layers")
    except (ValueError, AttributeError):
        layers = None
    if not isinstance(layers, list) or not layers or not all(isinstance(x, int) for x in layers):
        raise UsageError(f"trace_file {trace_file!r} has no list of suggested_layers; pass a trace.json written by "
                         f"`posttrain trace`")
    return layers


def resolve_layers(spec, trace_file: str | None, num_layers: int) -> list[int] | None:
    """The layer indices whose MLPs train, or None for `full` (every parameter trains)."""
    parsed = parse_layer_spec(spec)
    if parsed == "full":
        return None
    if parsed == "auto" and not trace_file:  # checked here, not in the config: a starter recipe leaves it unset
        raise UsageError("unlearn_layers auto reads the traced layers from trace_file; set trace_file (from "
                         "`posttrain trace`), or list the layers (e.g. 0-5), or use all or full")
    layers = list(range(num_layers)) if parsed == "all" else traced_layers(trace_file) if parsed == "auto" else parsed
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise UsageError(f"unlearn_layers {bad} are not layers of this {num_layers}-layer model; "
                         f"use 0..{num_layers - 1}")
    return layers


@dataclass
class UnlearnConfig(trl.SFTConfig):
    """Defaults follow the paper (docs/methods.md §5.2); where the authors' code differs, the field help says so."""

    unlearn_loss: str = field(default="joint", metadata={
        "help": "joint: -CE_forget + alpha*CE_retain with the adaptive alpha (the paper); ga: gradient ascent; gd: "
                "gradient difference with retain_weight; npo: NPO on the forget set + retain_weight*CE_retain.",
        "choices": list(UNLEARN_LOSSES)})
    unlearn_layers: list[int] | list[str] | str = field(default_factory=lambda: ["auto"], metadata={
        "help": "Layers whose MLP weights train (everything else is frozen and left out of the optimizer): indices "
                "such as 0-5 or 1,3,5; all (every layer's MLP); auto (trace_file's suggested_layers); full (every "
                "parameter: the full-model baselines). The paper's traced layers for OLMo 1B/7B are 0-5; the "
                "authors' code defaults to 0-5 on its command line but 1-6 in its function."})
    trace_file: str | None = field(default=None, metadata={
        "help": "trace.json from `posttrain trace`, read when unlearn_layers is auto."})
    alpha_a: float = field(default=0.3, metadata={"help": "a of alpha = clip(a * b**dL + c, alpha_min, alpha_max)."})
    alpha_b: float = field(default=6.0, metadata={"help": "b of the alpha schedule."})
    alpha_c: float = field(default=0.8, metadata={"help": "c of the alpha schedule."})
    alpha_min: float = field(default=1.2, metadata={"help": "Lower clip of alpha."})
    alpha_max: float = field(default=2.8, metadata={
        "help": "Upper clip of alpha (the paper: 2.8; the authors' code: 2.3)."})
    alpha_decimals: int | None = field(default=None, metadata={
        "help": "Round a*b**dL + c to this many decimals before clipping (the authors' code: 1; the paper: none)."})
    warmup_alpha: float = field(default=1.2, metadata={
        "help": "alpha during the baseline epochs, while the retain-CE baseline is averaged (paper and code: 1.2)."})
    baseline_epochs: int = field(default=1, metadata={
        "help": "Epochs at the start whose retain CE is averaged into the baseline of dL (the paper: epoch 0)."})
    baseline_mean: str = field(default="batches", metadata={
        "help": "batches: the baseline is the mean retain CE over the baseline epochs' batches (the paper); "
                "examples: their sum divided by the number of retain examples (the authors' code).",
        "choices": list(BASELINE_MEANS)})
    retain_weight: float = field(default=1.0, metadata={
        "help": "Weight of CE_retain in gd and npo (open-unlearning's GradDiff and NPO: 1; 0 gives plain NPO)."})
    npo_beta: float = field(default=0.1, metadata={"help": "beta of NPO (Zhang et al. 2024; open-unlearning: 0.1)."})
    ref_logps_cache_dir: str | None = field(default_factory=default_cache_dir, metadata={
        "help": "Disk cache of NPO's reference log-probs (as the DPO family's); empty string: no disk cache."})
    precompute_ref_batch_size: int | None = field(default=None, metadata={
        "help": "Batch size of NPO's reference pass (default per_device_train_batch_size)."})
    learning_rate: float = field(default=1.5e-5, metadata={"help": "The paper: 1.5e-5."})
    num_train_epochs: float = field(default=8.0, metadata={"help": "The paper: 8 epochs."})
    completion_only_loss: bool | None = field(default=True, metadata={
        "help": "Must stay true: each CE covers output tokens only, the prompt masked."})
    prediction_loss_only: bool = field(default=True, metadata={
        "help": "Evaluation computes the joint loss only (the best checkpoint is chosen by it)."})

    def __post_init__(self):
        super().__post_init__()
        if self.unlearn_loss not in UNLEARN_LOSSES:
            raise ValueError(f"unlearn_loss must be one of {', '.join(UNLEARN_LOSSES)}, got {self.unlearn_loss!r}")
        if self.baseline_mean not in BASELINE_MEANS:
            raise ValueError(f"baseline_mean must be one of {', '.join(BASELINE_MEANS)}, got {self.baseline_mean!r}")
        parse_layer_spec(self.unlearn_layers)  # the syntax; `auto` needs trace_file, checked by the hook
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"alpha_min {self.alpha_min} is above alpha_max {self.alpha_max}")
        if self.baseline_epochs < 1:
            raise ValueError(f"baseline_epochs must be >= 1 (dL needs a baseline), got {self.baseline_epochs}")
        if self.npo_beta <= 0 or self.retain_weight < 0:
            raise ValueError("npo_beta must be > 0 and retain_weight >= 0")
        if self.packing or self.padding_free:
            raise ValueError("unlearning keeps forget and retain rows apart; set packing and padding_free false")
        if self.completion_only_loss is False:
            raise ValueError("unlearning masks the prompt (the CEs cover output tokens only); completion_only_loss "
                             "must be true")

    @property
    def needs_retain(self) -> bool:
        return self.unlearn_loss == "joint" or (self.unlearn_loss in ("gd", "npo") and self.retain_weight > 0)


def as_prompt_completion(dataset):
    """LUME-format rows (`input`, `output`) renamed to the `prompt`, `completion` columns TRL tokenises."""
    if dataset is None or "prompt" in dataset.column_names:
        return dataset
    present = {old: new for old, new in LUME_COLUMNS.items() if old in dataset.column_names}
    return dataset.rename_columns(present) if len(present) == len(LUME_COLUMNS) else dataset


def check_unlearning_data(dataset, needs_retain: bool, name: str) -> None:
    """A one-line error unless `dataset` has prompt/completion (or LUME's input/output) and split columns, every
    split is forget or retain, and it holds forget rows (and retain rows when the loss uses them)."""
    columns = set(as_prompt_completion(dataset).column_names)
    missing = sorted({"prompt", "completion", "split"} - columns)
    if missing:
        raise UsageError(f"{name} is missing column(s) {', '.join(missing)} needed for unlearning (prompt/completion "
                         f"or LUME's input/output, and split: forget or retain; has: {', '.join(sorted(columns))})")
    splits = set(dataset.unique("split"))
    if splits - set(SPLITS):
        raise UsageError(f"{name} has split values {sorted(map(str, splits - set(SPLITS)))}; each row's split must be "
                         f"forget or retain")
    needed = ["forget", *(["retain"] if needs_retain else [])]
    absent = [split for split in needed if split not in splits]
    if absent:
        raise UsageError(f"{name} has no {' or '.join(absent)} rows; this unlearning loss needs {' and '.join(needed)}")


@dataclass
class ForgetRetainCollator(DataCollatorForLanguageModeling):
    """TRL's padding collator plus `forget`, a (B,) bool per row (its split), and any float `*_logps` columns."""

    def torch_call(self, examples: list[dict]) -> dict:
        batch = super().torch_call(examples)
        batch["forget"] = torch.tensor([example["split"] == "forget" for example in examples])
        for key in examples[0]:
            if key.endswith("_logps"):
                batch[key] = torch.tensor([example[key] for example in examples])
        return batch


def forget_retain_collator(tokenizer, args) -> ForgetRetainCollator:
    from posttrain.trainers.dpo import _pad_token_id

    return ForgetRetainCollator(pad_token_id=_pad_token_id(tokenizer, args), pad_to_multiple_of=args.pad_to_multiple_of)


def construction_hook(recipe, tokenizer, train_dataset, eval_dataset) -> dict:
    """Checks the data and the layer choice before the model loads; the trainer gets the forget/retain collator."""
    from transformers import AutoConfig

    args = recipe.training
    for name, dataset in (("training data", train_dataset), ("evaluation data", eval_dataset)):
        if dataset is not None:
            check_unlearning_data(dataset, args.needs_retain, f"{name} {recipe.run.dataset_name!r}")
    config = AutoConfig.from_pretrained(recipe.model.model_name_or_path, revision=recipe.model.model_revision,
                                        trust_remote_code=args.trust_remote_code)
    resolve_layers(args.unlearn_layers, args.trace_file, config.get_text_config().num_hidden_layers)
    return {"data_collator": forget_retain_collator(tokenizer, args)}


def freeze_for_unlearning(model, layers: list[int] | None) -> list[str]:
    """Leave only the MLP parameters of `layers` trainable (under PEFT: the adapters inside those MLPs); None keeps
    every trainable parameter. Returns the names of the parameters that train."""
    from accelerate.utils import is_peft_model

    from posttrain.model_layout import mlp_parameter_names

    if layers is not None:
        chosen = set(mlp_parameter_names(model, layers))
        peft = is_peft_model(model)
        for name, param in model.named_parameters():
            param.requires_grad_(name in chosen and (not peft or is_adapter_tensor(name)))
    trained = [name for name, param in model.named_parameters() if param.requires_grad]
    if not trained:
        raise UsageError(f"no parameter of the MLPs of layers {layers} can train; under LoRA, target the MLP "
                         f"projections (e.g. lora_target_modules: [gate_proj, up_proj, down_proj])")
    return trained


class RetainBaseline(TrainerCallback, ExportableState):
    """The retain CE summed over the baseline epochs' batches, and the last alpha (a batch without retain rows
    keeps it), saved in checkpoints (trainer_state.json) so a resumed run goes on with both."""

    def __init__(self, total: float = 0.0, batches: int = 0, examples: int = 0, alpha: float = 1.2):
        self.total, self.batches, self.examples, self.alpha = total, batches, examples, alpha

    def add(self, ce_retain: float, examples: int) -> None:
        self.total += ce_retain
        self.batches += 1
        self.examples += examples

    def mean(self, over: str) -> float | None:
        count = self.batches if over == "batches" else self.examples
        return self.total / count if count else None

    def state(self) -> dict:
        return {"args": {}, "attributes": {"total": self.total, "batches": self.batches, "examples": self.examples,
                                           "alpha": self.alpha}}


COMPLETION = (Sequence("completion", "input_ids", "labels"),)  # NPO's scored sequence (labels mask the prompt)
REF_COLUMN = logps_column("ref", "completion")
STATS = ("forget_nll", "retain_nll", "forget_tokens", "retain_tokens", "forget_rows", "retain_rows")


class UnlearnTrainer(SequenceLogpsCacheMixin, trl.SFTTrainer):
    """`trl.SFTTrainer` with the unlearning losses of `posttrain.losses` over mixed forget/retain batches; logs
    `unlearn/alpha`, `unlearn/ce_forget`, `unlearn/ce_retain` and `unlearn/delta_retain` (dL)."""

    sequences = COMPLETION
    loss_is_scaled_for_ga = False  # each micro-batch's loss is its own token mean: the Trainer averages them
    ref_model = None
    _precompute_engine = None

    def __init__(self, model, args: UnlearnConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, **kwargs):
        train_dataset, eval_dataset = as_prompt_completion(train_dataset), as_prompt_completion(eval_dataset)
        for name, dataset in (("training data", train_dataset), ("evaluation data", eval_dataset)):
            if dataset is not None:
                check_unlearning_data(dataset, args.needs_retain, name)
        if data_collator is None and processing_class is not None:
            data_collator = forget_retain_collator(processing_class, args)
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, processing_class, **kwargs)
        from posttrain.model_layout import decoder_layers

        layers = resolve_layers(args.unlearn_layers, args.trace_file, len(decoder_layers(self.model)))
        self.unlearn_layers = layers
        self.trained_parameters = freeze_for_unlearning(self.model, layers)
        self.baseline = RetainBaseline(alpha=args.warmup_alpha)
        self.add_callback(self.baseline)
        if args.unlearn_loss == "npo":
            self.train_dataset = self.add_logps_columns(self.train_dataset, "ref", split="train")
            if self.eval_dataset is not None:
                self.eval_dataset = self.add_logps_columns(self.eval_dataset, "ref", split="eval")

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "labels", "split", REF_COLUMN]

    def _load_callback_state(self) -> None:
        """Restore the retain baseline from the resumed checkpoint (transformers restores callbacks only on request)."""
        super()._load_callback_state()
        self.baseline = next(cb for cb in self.callback_handler.callbacks if isinstance(cb, RetainBaseline))
        saved = self.state.stateful_callbacks.get(type(self.baseline).__name__, {})
        for key, value in (saved.get("attributes") or {}).items():
            setattr(self.baseline, key, value)

    def _forward(self, model, inputs: dict, router_logits: bool = False):
        """The fused-head forward; `router_logits` (the policy's, as TRL's SFT) makes a MoE model return aux_loss."""
        batch = {k: v for k, v in inputs.items() if k != "forget" and not k.endswith("_logps")}
        extra = {"output_router_logits": True} if router_logits else {}
        return model(**batch, fused_lm_head=True, use_cache=False, **extra)

    def frozen_logps(self, model, batch: dict, peft_model=None) -> dict[str, torch.Tensor]:
        """Summed output-token log-probs without gradient (the adapter off under LoRA): NPO's reference."""
        import contextlib

        from trl.trainer.utils import use_adapter

        adapter = use_adapter(peft_model, adapter_name=None) if peft_model is not None else contextlib.nullcontext()
        with torch.no_grad(), adapter, self.accelerator.autocast():
            return {"completion": self._forward(model, batch).log_probs.sum(dim=1)}

    def _global_stats(self, token_logps, mask, forget) -> dict[str, torch.Tensor]:
        """Sums over every process (no gradient) of the forget and retain NLLs, tokens and rows."""
        rows = forget.to(mask.dtype)
        forget_mask, retain_mask = mask * rows[:, None], mask * (1 - rows[:, None])
        local = torch.stack([-(token_logps * forget_mask).sum(), -(token_logps * retain_mask).sum(),
                             forget_mask.sum(), retain_mask.sum(), rows.sum(), (1 - rows).sum()]).detach().float()
        return dict(zip(STATS, self.accelerator.reduce(local, reduction="sum")))

    def _alpha_for(self, ce_retain: float, retain_rows: int) -> tuple[float, float | None]:
        """(alpha, dL) for this training batch; during the baseline epochs it also adds to the baseline."""
        args = self.args
        if retain_rows == 0:
            return self.baseline.alpha, None
        if self.state.epoch < args.baseline_epochs:
            self.baseline.add(ce_retain, retain_rows)
            return args.warmup_alpha, None
        baseline = self.baseline.mean(args.baseline_mean)
        delta = None if baseline is None else ce_retain - baseline
        return unlearn_alpha(delta, args.alpha_a, args.alpha_b, args.alpha_c, args.alpha_min, args.alpha_max,
                             args.alpha_decimals), delta

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args, mode = self.args, "train" if self.model.training else "eval"
        outputs = self._forward(model, inputs, router_logits=self.aux_loss_enabled)
        token_logps, forget = outputs.log_probs, inputs["forget"]
        mask = outputs.label_mask.to(token_logps.dtype)
        stats = self._global_stats(token_logps, mask, forget)
        processes = self.accelerator.num_processes  # gradients are averaged over processes: scale each share up
        rows = forget.to(mask.dtype)[:, None]
        ce_forget = token_nll(token_logps, mask * rows, stats["forget_tokens"] / processes)
        ce_retain = token_nll(token_logps, mask * (1 - rows), stats["retain_tokens"] / processes)
        ce_f_value = (stats["forget_nll"] / stats["forget_tokens"].clamp(min=1)).item()
        ce_r_value = (stats["retain_nll"] / stats["retain_tokens"].clamp(min=1)).item()
        delta = None
        if args.unlearn_loss == "joint":
            if mode == "train":
                self.baseline.alpha, delta = self._alpha_for(ce_r_value, int(stats["retain_rows"].item()))
            loss = unlearn_joint_loss(ce_forget, ce_retain, self.baseline.alpha)
        elif args.unlearn_loss == "ga":
            loss = -ce_forget
        elif args.unlearn_loss == "gd":
            loss = unlearn_joint_loss(ce_forget, ce_retain, args.retain_weight)
        else:
            selected = forget.bool()
            npo = npo_loss(token_logps.sum(dim=1)[selected], inputs[REF_COLUMN][selected].to(token_logps.dtype),
                           args.npo_beta, stats["forget_rows"] / processes)
            loss = npo + args.retain_weight * ce_retain
            self._metrics[mode]["unlearn/npo"].append(self.accelerator.reduce(npo.detach(), "mean").item())
        if self.aux_loss_enabled:  # a MoE model's router load-balancing loss, added as TRL's SFTTrainer adds it
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.reduce(outputs.aux_loss.detach(), "mean").item())
        self._log_unlearning(mode, inputs, ce_f_value, ce_r_value, delta)
        if return_outputs:  # logits for `compute_metrics`: one plain forward
            with torch.no_grad():
                batch = {k: v for k, v in inputs.items() if k not in ("forget", "labels") and not k.endswith("_logps")}
                return loss, model(**batch)
        return loss

    def _log_unlearning(self, mode: str, inputs: dict, ce_forget: float, ce_retain: float,
                        delta: float | None) -> None:
        metrics = self._metrics[mode]
        metrics["unlearn/ce_forget"].append(ce_forget)
        metrics["unlearn/ce_retain"].append(ce_retain)
        if self.args.unlearn_loss == "joint":
            metrics["unlearn/alpha"].append(self.baseline.alpha)
            if delta is not None:
                metrics["unlearn/delta_retain"].append(delta)
        if mode == "train":
            tokens = self.accelerator.reduce(inputs["attention_mask"].sum(), reduction="sum").item()
            self._total_train_tokens += tokens // self._tp_size
            metrics["num_tokens"] = [self._total_train_tokens]
