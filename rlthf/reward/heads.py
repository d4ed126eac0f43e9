"""Reward heads trained on folds of cached embeddings: one k-fold trainer behind the simulated labeler's hardness,
the paper's flipped ground truth and the committees of the other selectors.

``fold_heads`` trains ``folds`` frozen-encoder reward heads, head ``k`` on every pair outside fold ``k`` under its
label (about a second each on cached embeddings). One training gives both:

- the committee: every head's margin ``r(a) - r(b)`` on every pair (query by committee);
- out-of-fold margins: each pair's margin under the one head that never saw it (hardness, confident learning).
"""
from __future__ import annotations

import numpy as np

from rlthf.config import RewardConfig
from rlthf.core.labels import flip_labels, label_sign
from rlthf.reward.common import validation_mask
from rlthf.reward.encoder_head import chosen_rejected_embeddings, head_rewards, train_head


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % folds


def fold_heads(emb_a: np.ndarray, emb_b: np.ndarray, labels, *, folds: int, config: RewardConfig,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Committee margins, shape (folds, n), and out-of-fold margins, shape (n,); all ``r(a) - r(b)``."""
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


def out_of_fold_margins(emb_a: np.ndarray, emb_b: np.ndarray, labels, *, folds: int, config: RewardConfig,
                        seed: int) -> np.ndarray:
    """Margin of each pair's label under a reward head that never saw the pair (k-fold)."""
    _, out_of_fold = fold_heads(emb_a, emb_b, labels, folds=folds, config=config, seed=seed)
    return label_sign(labels) * out_of_fold


def hardness_scores(emb_a, emb_b, truth, *, folds: int, config: RewardConfig, seed: int) -> np.ndarray:
    """Hardness of a pair: minus its out-of-fold margin under the true label (a head trained on the other folds
    finds its label unlikely)."""
    return -out_of_fold_margins(emb_a, emb_b, truth, folds=folds, config=config, seed=seed)


def paper_flipped_truth(emb_a: np.ndarray, emb_b: np.ndarray, human_label, *, config: RewardConfig,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's ground truth (appendix C.1.2): human labels with those flipped that a head trained on all of
    them scores negative; and the flip mask."""
    human_label = np.asarray(human_label).astype(str)
    chosen, rejected = chosen_rejected_embeddings(emb_a, emb_b, human_label)
    val = validation_mask(np.arange(len(human_label)).astype(str), config.val_fraction, seed)
    state, _ = train_head(chosen, rejected, val, config, seed)
    margin = (head_rewards(state, chosen, config.head, config.head_hidden)
              - head_rewards(state, rejected, config.head, config.head_hidden))
    flipped = margin < 0
    return np.where(flipped, flip_labels(human_label), human_label).astype(object), flipped
