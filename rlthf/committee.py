"""The models behind the other selectors (``rlthf.selectors``): a committee of reward heads on folds of the shard.

``fold_heads`` trains ``folds`` frozen-encoder reward heads, head ``k`` on every shard pair outside fold ``k``
under its working label, on the cached embeddings (about a second each). One training gives both:

- the committee: every head's margin ``r(a) - r(b)`` on every pair (query by committee);
- out-of-fold margins: each pair's margin under the one head that never saw it (confident learning).

``annotation_order`` turns a config's ``selection.selector`` into the priority that ``select_pairs`` takes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlthf.config import RewardConfig, RLTHFConfig
from rlthf.selectors import committee_order, confident_learning_order, uncertainty_order


def fold_heads(emb_a: np.ndarray, emb_b: np.ndarray, labels, *, folds: int, config: RewardConfig,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Committee margins, shape (folds, n), and out-of-fold margins, shape (n,); all ``r(a) - r(b)``."""
    from rlthf.reward.common import validation_mask
    from rlthf.reward.encoder_head import chosen_rejected_embeddings, head_rewards, train_head
    from rlthf.simulation import fold_of

    labels = np.asarray(labels).astype(str)
    fold = fold_of(len(labels), folds, seed)
    chosen, rejected = chosen_rejected_embeddings(emb_a, emb_b, labels)
    committee = np.empty((folds, len(labels)))
    for k in range(folds):
        fit = np.flatnonzero(fold != k)
        val = validation_mask(fit.astype(str), config.val_fraction, seed + k)
        state, _ = train_head(chosen[fit], rejected[fit], val, config, seed + k)
        committee[k] = (head_rewards(state, emb_a, config.head, config.head_hidden)
                        - head_rewards(state, emb_b, config.head, config.head_hidden))
    out_of_fold = committee[fold, np.arange(len(labels))]
    return committee, out_of_fold


def committee_reward_config(config: RLTHFConfig) -> RewardConfig:
    """The reward backend's own head config with encoder_head; MiniLM's (the hardness model) with lora."""
    if config.reward.backend == "encoder_head":
        return config.reward
    from rlthf.loop import simulation_reward_config

    return simulation_reward_config(config.ai_labels.hardness_model)


def annotation_order(config: RLTHFConfig, shard: pd.DataFrame, labels, shard_scores: pd.DataFrame, *,
                     cache_dir: str | Path, seed: int) -> np.ndarray:
    """The priority of ``config.selection.selector`` (uncertainty, qbc or confident_learning) over the shard."""
    s = config.selection
    margin_a = (shard_scores["reward_a"] - shard_scores["reward_b"]).to_numpy(dtype=float)
    if s.selector == "uncertainty":
        return uncertainty_order(margin_a)
    if s.selector not in ("qbc", "confident_learning"):
        raise ValueError(f"selection.selector {s.selector!r} has no annotation order here")
    from rlthf.reward.encoder_head import EncoderHeadReward

    head_config = committee_reward_config(config)
    emb_a, emb_b = EncoderHeadReward(head_config, cache_dir).embeddings(shard)
    committee, out_of_fold = fold_heads(emb_a, emb_b, labels, folds=s.committee_size, config=head_config, seed=seed)
    if s.selector == "qbc":
        return committee_order(committee)
    return confident_learning_order(labels, 1.0 / (1.0 + np.exp(-out_of_fold)))
