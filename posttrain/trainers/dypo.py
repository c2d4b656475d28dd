"""DYPO: a per-group gate between SFT on teacher traces and GRPO with a group alignment loss (Zhu et al. 2026;
docs/methods.md §4).

`DYPOTrainer` is TRL's `GRPOTrainer` with three narrow overrides:

- `_calculate_rewards`, where the rewards of every process are gathered whole, laid out `[groups, k]`: the gate
  (`posttrain.losses.route_groups`) routes each group easy, hard or mid;
- `_generate_and_score_completions`: adds per-row fields (`dypo_*`: route, group, success, the GAL partners' r
  values, and for one row of each hard group the tokenised teacher trace) that travel through TRL's shuffle and
  split into the loss;
- `_compute_loss`: TRL's GRPO loss with the non-mid rows masked out, plus each row's GAL share
  (`gal_row_loss`) and the hard rows' SFT on the teacher trace, normalised per group as `dypo_loss` is.

Rewards (exact match, or `math-verify`) come from the construction hook in `posttrain.trainers.dypo_rewards`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from trl.data_utils import apply_chat_template, is_conversational
from trl.trainer.utils import selective_log_softmax

from posttrain.console import quiet_vllm_import
from posttrain.losses import (
    DYPO_SFT_NORMALIZATIONS,
    GAL_PAIRINGS,
    ROUTE_HARD,
    ROUTE_MID,
    ROUTE_NAMES,
    dypo_mid_weights,
    gal_loss,
    gal_pair_mask,
    gal_row_loss,
    route_groups,
    sequence_nll,
)

with quiet_vllm_import():  # TRL's GRPO module imports vLLM when it is installed
    from trl import GRPOConfig, GRPOTrainer

ANSWER_REWARDS = ("exact_match", "math_verify")


@dataclass
class DYPOConfig(GRPOConfig):
    """Defaults follow the paper (alpha 0.5, beta_GAL 1.0, k 8, lr 1e-6; gamma 1.0 as the authors' README). The
    authors' code departs in places; each is an option here (docs/methods.md §4)."""

    alpha: float = field(default=0.5, metadata={"help": "Mid groups: alpha * L_GRPO + (1 - alpha) * L_GAL."})
    beta_gal: float = field(default=1.0, metadata={"help": "GAL temperature (paper 1.0; authors' code 0.1)."})
    gamma_sft: float = field(default=1.0, metadata={"help": "Weight of the SFT term on hard groups."})
    gal_use_ref: bool = field(
        default=False,
        metadata={"help": "GAL's r = logp - ref_logp (true) or logp (false, reference-free as the authors' code). "
                          "True reuses the reference TRL keeps for its KL term, so it needs beta > 0."})
    gal_pairing: str = field(
        default="all", metadata={"help": "all: every success x failure pair of a group; zip: the j-th success with "
                                         "the j-th failure.", "choices": list(GAL_PAIRINGS)})
    contrastive_loss_coef: float | None = field(
        default=None, metadata={"help": "Set: the authors' additive form L_GRPO + coef * L_GAL on mid groups "
                                        "(their value 0.001) instead of the paper's (1 - alpha) mixture."})
    sft_normalization: str = field(
        default="sum", metadata={"help": "sum: L_SFT = -logp(teacher|q) (the paper); mean: per-token mean.",
                                 "choices": list(DYPO_SFT_NORMALIZATIONS)})
    correct_reward: float = field(
        default=1.0, metadata={"help": "A rollout is correct when its summed reward equals this exactly."})
    teacher_columns: list[str] = field(
        default_factory=lambda: ["teachers"],
        metadata={"help": "Columns holding the teacher traces: each a string or a list of strings; a row's "
                          "teachers are these in order."})
    num_teachers: int | None = field(
        default=None, metadata={"help": "Use the first m teachers of each row (none: all); hard groups draw one "
                                        "uniformly, seeded."})
    max_teacher_length: int | None = field(
        default=None, metadata={"help": "Truncate teacher traces to this many tokens (none: max_completion_length)."})
    answer_reward: str = field(
        default="exact_match", metadata={"help": "exact_match: the completion's last field equals `answer`; "
                                                 "math_verify: math-verify's parse/verify of the answer.",
                                         "choices": list(ANSWER_REWARDS)})
    seed_each_group: bool = field(
        default=False, metadata={"help": "Transformers generation: sample each group's rollouts (its part on this "
                                         "process) in one call seeded by (seed, step, first global row), so rollouts "
                                         "do not depend on the process count while each process's generation batch "
                                         "holds whole groups."})
    loss_type: str = field(default="grpo", metadata={"help": "GRPO term's loss (paper: standard clipped GRPO)."})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.beta_gal <= 0 or self.gamma_sft < 0 or (self.contrastive_loss_coef or 0) < 0:
            raise ValueError("beta_gal must be > 0, and gamma_sft and contrastive_loss_coef >= 0")
        if self.gal_pairing not in GAL_PAIRINGS or self.sft_normalization not in DYPO_SFT_NORMALIZATIONS:
            raise ValueError(f"gal_pairing must be one of {', '.join(GAL_PAIRINGS)} and sft_normalization one of "
                             f"{', '.join(DYPO_SFT_NORMALIZATIONS)}")
        if self.answer_reward not in ANSWER_REWARDS:
            raise ValueError(f"answer_reward must be one of {', '.join(ANSWER_REWARDS)}, got {self.answer_reward!r}")
        if not self.teacher_columns or (self.num_teachers is not None and self.num_teachers < 1):
            raise ValueError("teacher_columns needs at least one column and num_teachers must be >= 1")
        if self.gal_use_ref and self.beta == 0.0:
            raise ValueError("gal_use_ref needs the reference model TRL keeps for its KL term; set beta > 0 "
                             "(e.g. 1e-4) or gal_use_ref false")
        if self.seed_each_group and self.use_vllm:
            raise ValueError("seed_each_group applies to transformers generation; turn it off with use_vllm")


def rollout_seed(seed: int, step: int, row: int) -> int:
    """The sampling seed of the rollouts from a global row on: a pure function of the run seed, step and row."""
    return random.Random(f"dypo/{seed}/{step}/{row}").getrandbits(63)


def teacher_traces(row: dict, columns: list[str], num_teachers: int | None) -> list[str]:
    """A row's teacher traces: the listed columns in order (a string or a list of strings each), the first m."""
    traces: list[str] = []
    for column in columns:
        value = row[column]
        traces += [value] if isinstance(value, str) else list(value or [])
    return traces[:num_teachers] if num_teachers else traces


class DYPOTrainer(GRPOTrainer):
    """GRPO with DYPO's gate: easy groups add no loss, hard groups SFT on one teacher trace, mid groups
    w_grpo * L_GRPO + w_gal * L_GAL. Logs the route shares (`dypo/*_share`) and `loss/grpo`, `loss/gal`,
    `loss/sft` (each the mean over the groups it applies to)."""

    _capture_logps = False
    _captured_logps = None

    # --- generation: seeded per group ------------------------------------------------------------------------------
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if (not self.args.seed_each_group or self.use_vllm or self.use_transformers_continuous_batching
                or images is not None or multimodal_fields):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        first_row, completions, start = self.accelerator.process_index * len(prompt_ids), [], 0
        device = self.accelerator.device
        while start < len(prompt_ids):  # one call per group (its rows on this process)
            row = first_row + start
            end = min(len(prompt_ids), start + num_generations - row % num_generations)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(rollout_seed(self.args.seed, self.state.global_step, row))
                part, _ = super()._generate_single_turn(prompt_ids[start:end], None, {}, num_generations,
                                                        has_tool_images)
            completions, start = completions + part, end
        return completions, None

    # --- the gate, where the rewards are whole -----------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        self._gathered_rewards = rewards
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        k = self.num_generations if mode == "train" else self.num_generations_eval
        success = self._gathered_rewards == self.args.correct_reward
        routes = route_groups(self._gathered_rewards.view(-1, k), self.args.correct_reward)
        for index, name in enumerate(ROUTE_NAMES):
            self._metrics[mode][f"dypo/{name}_share"].append((routes == index).float().mean().item())
        local = len(inputs)
        rows = torch.arange(local, device=routes.device) + self.accelerator.process_index * local
        groups = rows // k
        fields = {"dypo_route": routes[groups], "dypo_group": groups, "dypo_success": success[rows]}
        fields.update(self._gal_fields(output, success.view(-1, k), routes, rows, k, mode))
        fields.update(self._teacher_fields(inputs, output, routes[groups], rows, k))
        return {**output, **fields}

    def _gal_fields(self, output, success, routes, rows, k: int, mode: str) -> dict:
        """Each row's GAL partners: their r values at generation time (the current policy's), the pair mask and
        the group's pair count. Logs `loss/gal`, the mean GAL of the mid groups at these values."""
        local = rows.numel()
        pairs = gal_pair_mask(success, self.args.gal_pairing)  # (Q, k, k): [s, f]
        if not (routes == ROUTE_MID).any():  # the same on every process: no forward skipped on one rank only
            empty = torch.zeros(local, k, device=rows.device)
            return {"dypo_partner_delta": empty, "dypo_partner_mask": empty.bool(),
                    "dypo_group_pairs": torch.zeros(local, device=rows.device)}
        delta = self.accelerator.gather(self._generation_delta(output)).view(-1, k)
        mid = (routes == ROUTE_MID).nonzero(as_tuple=True)[0]
        gal = [gal_loss(delta[q], success[q], self.args.beta_gal, pairing=self.args.gal_pairing) for q in mid]
        self._metrics[mode]["loss/gal"].append(torch.stack(gal).mean().item())
        groups, position = rows // k, rows % k
        own_success = success[groups, position]
        as_success, as_failure = pairs[groups, position, :], pairs[groups, :, position]
        partner_mask = torch.where(own_success[:, None], as_success, as_failure)
        return {"dypo_partner_delta": delta[groups], "dypo_partner_mask": partner_mask,
                "dypo_group_pairs": pairs.flatten(1).sum(1)[groups].float()}

    def _generation_delta(self, output) -> torch.Tensor:
        """(B,) r of each local rollout under the policy that generated it: summed logp, minus the reference's."""
        mask = self._loss_mask(output)
        logps = output.get("old_per_token_logps")
        if logps is None:
            with torch.no_grad():
                ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
                attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, ids, attention, output["completion_ids"].size(1), self._forward_batch_size())
        return self._delta(logps, output, mask)

    def _delta(self, logps, batch, mask) -> torch.Tensor:
        delta = (logps * mask).sum(dim=1)
        if self.args.gal_use_ref:
            delta = delta - (batch["ref_per_token_logps"] * mask).sum(dim=1)
        return delta

    @staticmethod
    def _loss_mask(batch) -> torch.Tensor:
        mask = batch["completion_mask"]
        return mask * batch["tool_mask"] if "tool_mask" in batch else mask

    def _forward_batch_size(self) -> int:
        training = self.model.training
        return self.args.per_device_train_batch_size if training else self.args.per_device_eval_batch_size

    def _teacher_fields(self, inputs, output, row_routes, rows, k: int) -> dict:
        """The tokenised teacher trace on the first row of each hard group (one SFT forward per hard group), drawn
        uniformly from the row's m teachers with a seed of (seed, step, group); empty on every other row."""
        limit = self.args.max_teacher_length or self.args.max_completion_length
        ids = [[] for _ in inputs]
        for i, (example, route, row) in enumerate(zip(inputs, row_routes.tolist(), rows.tolist(), strict=True)):
            if route == ROUTE_HARD and row % k == 0:
                traces = teacher_traces(example, self.args.teacher_columns, self.args.num_teachers)
                trace = random.Random(f"dypo-teacher/{self.args.seed}/{self.state.global_step}/{row // k}").choice(
                    traces)
                ids[i] = self._tokenize_teacher(example["prompt"], trace)[:limit]
        width = max(1, max(map(len, ids)))
        device = output["completion_ids"].device
        padded = torch.full((len(ids), width), self._tokenizer.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(ids), width), dtype=torch.long, device=device)
        for i, row_ids in enumerate(ids):
            padded[i, :len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
            mask[i, :len(row_ids)] = 1
        return {"dypo_teacher_ids": padded, "dypo_teacher_mask": mask}

    def _tokenize_teacher(self, prompt, trace: str) -> list[int]:
        """The trace's tokens as a completion of `prompt`: the chat template's assistant turn, or text + EOS."""
        if is_conversational({"prompt": prompt}):
            text = apply_chat_template({"prompt": prompt, "completion": [{"role": "assistant", "content": trace}]},
                                       self.processing_class, **self.chat_template_kwargs)["completion"]
        else:
            text = trace + self._tokenizer.eos_token
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    # --- the loss --------------------------------------------------------------------------------------------------
    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._capture_logps:  # the policy forward inside GRPOTrainer._compute_loss: GAL reuses it
            self._captured_logps, self._capture_logps = result[0], False
        return result

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        mid = (inputs["dypo_route"] == ROUTE_MID).long()
        base_mask = inputs.get("tool_mask", torch.ones_like(inputs["completion_mask"]))
        self._capture_logps = True
        grpo = super()._compute_loss(model, {**inputs, "tool_mask": base_mask * mid[:, None]})
        logps, self._captured_logps, self._capture_logps = self._captured_logps, None, False
        delta = self._delta(logps, inputs, self._loss_mask(inputs))
        gal = gal_row_loss(delta, inputs["dypo_partner_delta"], inputs["dypo_partner_mask"], inputs["dypo_success"],
                           inputs["dypo_group_pairs"], self.args.beta_gal) * mid
        sft, teacher_rows = self._teacher_nll(model, inputs)
        w_grpo, w_gal = dypo_mid_weights(self.args.alpha, self.args.contrastive_loss_coef)
        loss = w_grpo * grpo + (w_gal * gal.sum() + self.args.gamma_sft * sft.sum()) / self._groups_per_micro_batch()
        self._log_terms(mode, grpo, sft, teacher_rows, mid)
        return loss

    def _teacher_nll(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) -logp of the teacher traces on this micro-batch's teacher rows, and the rows. Every micro-batch runs
        the forward (row 0 at weight 0 when it has none), so processes stay in step under ZeRO-3."""
        teacher_mask = inputs["dypo_teacher_mask"]
        rows = teacher_mask.any(dim=1).nonzero(as_tuple=True)[0]
        chosen = rows if rows.numel() else torch.zeros(1, dtype=torch.long, device=teacher_mask.device)
        ids = torch.cat([inputs["prompt_ids"][chosen], inputs["dypo_teacher_ids"][chosen]], dim=1)
        attention = torch.cat([inputs["prompt_mask"][chosen], teacher_mask[chosen]], dim=1)
        if self.temperature == 1.0:  # TRL's fused head is then at temperature 1, and keeps no (rows, length, V) logits
            logps, _, _ = self._get_per_token_logps_and_entropies(model, ids, attention, teacher_mask.size(1))
        else:
            logps = self._teacher_logps(model, ids, attention, teacher_mask.size(1))
        nll = sequence_nll(logps, teacher_mask[chosen], self.args.sft_normalization)
        return (nll if rows.numel() else nll * 0.0), rows

    @staticmethod
    def _teacher_logps(model, ids: torch.Tensor, attention: torch.Tensor, length: int) -> torch.Tensor:
        """Per-token log-probs of the last `length` tokens at temperature 1: L_SFT is the plain -logp(tau|q), while
        TRL's fused head (the GRPO forward) divides the logits by the sampling temperature. A plain forward: the
        teacher rows' logits exist for `length` positions (docs/methods.md §4)."""
        logits = model(input_ids=ids, attention_mask=attention, logits_to_keep=length + 1, use_cache=False).logits
        return selective_log_softmax(logits[:, :-1].float(), ids[:, -length:])

    def _groups_per_micro_batch(self) -> float:
        """Groups per optimizer step on one process (a fraction when a group spans processes): each micro-batch's
        share of the mean over groups, as TRL scales its own loss for accumulation."""
        if self.model.training:
            rows = self.args.per_device_train_batch_size * self.current_gradient_accumulation_steps
            return rows / self.num_generations
        return self.args.per_device_eval_batch_size / self.num_generations_eval

    def _log_terms(self, mode: str, grpo, sft, teacher_rows, mid) -> None:
        """`loss/grpo` (TRL's GRPO loss over this micro-batch), `loss/sft` (mean over its hard groups' traces)."""
        scale = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        self._metrics[mode]["loss/grpo"].append(self.accelerator.gather(grpo.detach() * scale).mean().item())
        totals = self.accelerator.gather(torch.stack([sft.detach().sum(), sft.new_tensor(teacher_rows.numel())]))
        totals = totals.view(-1, 2).sum(dim=0)
        if totals[1] > 0:
            self._metrics[mode]["loss/sft"].append((totals[0] / totals[1]).item())
