"""The types every generation backend shares: `SamplingParams` in, `Completion` out, the `Generator` protocol."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length"]
# Chat messages, raw text, or token ids that go to the model exactly as given (no template, no BOS added): the
# SRPO revision loop passes the ids its trainer trained on. The OpenAI-compatible backend takes text and chat only.
Prompt = list[dict] | str | list[int]


def is_token_ids(prompt) -> bool:
    """Whether `prompt` is a non-empty list (or tuple) of token ids rather than text or chat messages."""
    return isinstance(prompt, list | tuple) and bool(prompt) and \
        all(isinstance(token, int) and not isinstance(token, bool) for token in prompt)


@dataclass(frozen=True)
class SamplingParams:
    """Shared by every backend. temperature 0 means greedy; top_k 0 means no top-k cut.

    `stop`: strings that end a completion; the text is cut before the first one, which is not included.
    `logprobs`: when set, each completion also carries, per generated token, its log-prob and the top-`logprobs`
    alternatives (decoded token string -> log-prob; the sampled token is always among them).
    """

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32
    seed: int = 0
    stop: tuple[str, ...] = ()
    logprobs: int | None = None

    def __post_init__(self):
        if isinstance(self.stop, str | list):  # a frozen dataclass must hold a hashable tuple
            object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        if self.n < 1 or self.max_new_tokens < 1 or self.temperature < 0 or (self.logprobs or 0) < 0:
            raise ValueError(f"invalid SamplingParams {self}: need n >= 1, max_new_tokens >= 1, temperature >= 0, "
                             "logprobs >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return {**asdict(self), "stop": list(self.stop)}


@dataclass
class Completion:
    """One generated continuation. `logprobs[i]` is the log-prob of `token_ids[i]`; `top_logprobs[i]` maps decoded
    token strings to log-probs for the top alternatives at step i. Both are None unless `SamplingParams.logprobs`."""

    prompt_index: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    finish_reason: FinishReason = "stop"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> Completion:
        return cls(**{k: record[k] for k in ("prompt_index", "text", "token_ids", "logprobs", "top_logprobs",
                                             "finish_reason")})


class Generator(Protocol):
    """What every backend offers. The built-in backends also accept `on_result(index, completions)`, called as
    each prompt finishes (the resumable cache streams through it), and expose a `model_id` string."""

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt (chat messages, raw text or token ids), `params.n` completions."""
