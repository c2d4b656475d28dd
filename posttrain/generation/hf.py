"""The transformers backend: batched `model.generate` with left padding. Fast for tiny models, and usable on a
model held in memory during training."""

from __future__ import annotations

from collections.abc import Callable

from posttrain.generation.decoding import StepLogprobs, TokenTexts, encode_prompt, eos_ids, finish_completion
from posttrain.generation.types import Completion, SamplingParams
from posttrain.models import left_pad

OnResult = Callable[[int, list[Completion]], None]


class TransformersGenerator:
    """`generate` batches prompts `batch_size` at a time; chat prompts go through the tokenizer's chat template and
    token-id prompts are used exactly as given.

    `model_id` names the weights for `generate_cached` (default: the model's `name_or_path`); pass a new one when
    the in-memory weights change. `generate_kwargs` go to every `model.generate` call (e.g. `synced_gpus`).
    `show_progress` draws a bar labelled `progress_desc`.
    """

    def __init__(self, model, tokenizer, batch_size: int = 256, show_progress: bool = False,
                 model_id: str | None = None, generate_kwargs: dict | None = None, progress_desc: str = "generate"):
        self.model, self.tokenizer = model, tokenizer
        self.generate_kwargs = dict(generate_kwargs or {})
        self.batch_size, self.show_progress, self.progress_desc = batch_size, show_progress, progress_desc
        self.model_id = model_id or f"transformers:{getattr(model.config, '_name_or_path', '')}"
        self._token_texts = TokenTexts(tokenizer)

    def generate(self, prompts, params: SamplingParams, on_result: OnResult | None = None) -> list[list[Completion]]:
        """For each prompt, `params.n` completions. `on_result(index, completions)` is called as each prompt's
        batch finishes (used by the resumable cache)."""
        import torch
        from tqdm.auto import tqdm

        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        results: list[list[Completion]] = [[] for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        torch.manual_seed(params.seed)
        try:
            with tqdm(total=len(encoded), desc=self.progress_desc, disable=not self.show_progress) as progress:
                for start in range(0, len(encoded), self.batch_size):
                    batch = encoded[start:start + self.batch_size]
                    for offset, completions in enumerate(self._generate_batch(batch, params)):
                        index = start + offset
                        for completion in completions:
                            completion.prompt_index = index
                        results[index] = completions
                        if on_result is not None:
                            on_result(index, completions)
                    progress.update(len(batch))
        finally:
            self.model.train(was_training)
        return results

    def _generate_batch(self, batch: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        import torch

        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        input_ids, attention = (tensor.to(device) for tensor in left_pad(batch, pad))
        width = input_ids.shape[1]
        sample, want_logprobs = not params.greedy, params.logprobs is not None
        enders = eos_ids(self.tokenizer, self.model.generation_config)
        stop_options = {"stop_strings": list(params.stop), "tokenizer": self.tokenizer} if params.stop else {}
        # top_k is passed even when 0: 0 means no cut, while None would mean HF's default of 50.
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=params.max_new_tokens,
                do_sample=sample, temperature=params.temperature if sample else None,
                top_p=params.top_p if sample else None, top_k=params.top_k if sample else None,
                num_return_sequences=params.n, pad_token_id=pad, eos_token_id=sorted(enders) or None,
                return_dict_in_generate=True, output_logits=want_logprobs, **stop_options, **self.generate_kwargs,
            )
        generated = out.sequences[:, width:]
        steps = _step_logprobs(out.logits, generated, params.logprobs) if want_logprobs else None
        rows = [finish_completion(0, ids, self.tokenizer, params, enders | {pad}, steps[row] if steps else None,
                                  self._token_texts)
                for row, ids in enumerate(generated.tolist())]
        return [rows[i * params.n:(i + 1) * params.n] for i in range(len(batch))]


def _step_logprobs(step_logits, generated, top: int) -> list[list[StepLogprobs]]:
    """Per row, per step: log-prob of the generated token and the `top` best alternatives, from the raw
    (unprocessed) logits, which is what vLLM reports by default too."""
    import torch

    per_row: list[list[StepLogprobs]] = [[] for _ in range(generated.shape[0])]
    for step, logits in enumerate(step_logits):
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        chosen = logprobs.gather(1, generated[:, step:step + 1]).squeeze(1).tolist()
        values, indices = logprobs.topk(top, dim=-1) if top else (logprobs[:, :0], logprobs[:, :0].long())
        for row, (value, alternatives, ids) in enumerate(zip(chosen, values.tolist(), indices.tolist())):
            per_row[row].append((value, list(zip(ids, alternatives))))
    return per_row
