"""DPO as TRL implements it, plus the persistent reference log-prob cache shared by the DPO family."""

from __future__ import annotations

from dataclasses import dataclass, field

import trl

from posttrain.trainers.ref_cache import ReferenceLogpsCacheMixin, default_cache_dir


@dataclass
class DPOConfig(trl.DPOConfig):
    """`trl.DPOConfig` with the reference log-probs precomputed by default and cached on disk."""

    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={"help": "Compute the frozen reference's log-probs once before training, so training never holds "
                          "a second model (posttrain default; TRL's is False)."},
    )
    ref_logps_cache_dir: str | None = field(
        default_factory=default_cache_dir,
        metadata={"help": "Directory of the reference log-prob cache, keyed by a hash of (reference weights, "
                          "tokenized data, truncation settings) and reused across runs and DPO-family methods. "
                          "Default $POSTTRAIN_CACHE/ref_logps (~/.cache/posttrain). Empty string: no disk cache."},
    )


class DPOTrainer(ReferenceLogpsCacheMixin, trl.DPOTrainer):
    """TRL's DPOTrainer, unchanged except that precomputed reference log-probs come from the disk cache."""
