"""Simulated labelers for experiments on data whose human labels are known.

- ``simulate_ai_labels``: the stand-in for an LLM judge. Its mistakes fall on hard pairs, as an LLM's do: each
  pair gets an error probability ``p_err = sigmoid(sharpness * z + bias)`` from its standardised hardness ``z``,
  with ``bias`` set (by bisection) so that the mean of ``p_err`` is ``1 - target_accuracy``; then exactly
  ``round((1 - target_accuracy) * n)`` pairs, drawn without replacement with weights ``p_err`` from a seeded
  generator, get the wrong label. ``noise="uniform"`` draws them with equal weights.
- ``hardness_scores``: hardness of a pair = minus its out-of-fold margin under the human label: a reward head
  trained on the other folds' human labels finds its label unlikely.
- ``paper_flipped_truth``: the paper's ground truth (appendix C.1.2): a reward head trained on all human labels
  scores every pair, and the labels it scores negative are flipped.
"""
from __future__ import annotations

import numpy as np

from rlthf.config import RewardConfig


def flip_labels(labels) -> np.ndarray:
    labels = np.asarray(labels).astype(str)
    return np.where(labels == "a", "b", "a").astype(object)


def label_sign(labels) -> np.ndarray:
    """+1 where a is preferred, -1 where b is: the paper's lambda."""
    return np.where(np.asarray(labels).astype(str) == "a", 1.0, -1.0)


def error_probabilities(hardness: np.ndarray, error_rate: float, sharpness: float) -> np.ndarray:
    """``sigmoid(sharpness * z + bias)`` with ``bias`` chosen so that the mean is ``error_rate``."""
    hardness = np.asarray(hardness, dtype=float)
    std = hardness.std()
    z = (hardness - hardness.mean()) / std if std > 0 else np.zeros_like(hardness)
    if error_rate <= 0:
        return np.zeros_like(z)
    # the bias that hits error_rate lies within +-(sharpness * max|z| + 50): beyond, every sigmoid saturates
    low = -(sharpness * np.abs(z).max() + 50.0)
    high = -low
    for _ in range(200):  # mean(sigmoid(...)) rises with bias: bisection converges
        bias = (low + high) / 2
        p = 1 / (1 + np.exp(-(sharpness * z + bias)))
        low, high = (bias, high) if p.mean() < error_rate else (low, bias)
    return p


def simulate_ai_labels(truth, *, target_accuracy: float, seed: int, hardness=None, sharpness: float = 2.0,
                       noise: str = "hardness") -> np.ndarray:
    """Labels with exactly ``round((1 - target_accuracy) * n)`` errors, placed on hard pairs (see module doc)."""
    truth = np.asarray(truth).astype(str)
    n = len(truth)
    n_errors = int(round((1 - target_accuracy) * n))
    if noise == "uniform":
        weights = np.ones(n)
    elif noise == "hardness":
        if hardness is None or len(hardness) != n:
            raise ValueError("noise='hardness' needs one hardness score per pair")
        weights = error_probabilities(hardness, n_errors / n, sharpness)
    else:
        raise ValueError(f"noise must be 'hardness' or 'uniform', got {noise!r}")
    rng = np.random.default_rng(seed)
    labels = truth.astype(object)
    if n_errors:
        errors = rng.choice(n, size=n_errors, replace=False, p=weights / weights.sum())
        labels[errors] = flip_labels(truth[errors])
    return labels


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % folds


def out_of_fold_margins(emb_a: np.ndarray, emb_b: np.ndarray, labels, *, folds: int, config: RewardConfig,
                        seed: int) -> np.ndarray:
    """Margin of each pair's label under a reward head that never saw the pair (k-fold)."""
    from rlthf.reward.common import validation_mask
    from rlthf.reward.encoder_head import chosen_rejected_embeddings, head_rewards, train_head

    labels = np.asarray(labels).astype(str)
    fold = fold_of(len(labels), folds, seed)
    margins = np.empty(len(labels))
    chosen, rejected = chosen_rejected_embeddings(emb_a, emb_b, labels)
    for k in range(folds):
        fit = np.flatnonzero(fold != k)
        val = validation_mask(fit.astype(str), config.val_fraction, seed + k)
        state, _ = train_head(chosen[fit], rejected[fit], val, config, seed + k)
        held = np.flatnonzero(fold == k)
        margins[held] = (head_rewards(state, chosen[held], config.head, config.head_hidden)
                         - head_rewards(state, rejected[held], config.head, config.head_hidden))
    return margins


def hardness_scores(emb_a, emb_b, truth, *, folds: int, config: RewardConfig, seed: int) -> np.ndarray:
    return -out_of_fold_margins(emb_a, emb_b, truth, folds=folds, config=config, seed=seed)


def paper_flipped_truth(emb_a: np.ndarray, emb_b: np.ndarray, human_label, *, config: RewardConfig,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Human labels with those flipped that a head trained on all of them scores negative; and the flip mask."""
    from rlthf.reward.common import validation_mask
    from rlthf.reward.encoder_head import chosen_rejected_embeddings, head_rewards, train_head

    human_label = np.asarray(human_label).astype(str)
    chosen, rejected = chosen_rejected_embeddings(emb_a, emb_b, human_label)
    val = validation_mask(np.arange(len(human_label)).astype(str), config.val_fraction, seed)
    state, _ = train_head(chosen, rejected, val, config, seed)
    margin = (head_rewards(state, chosen, config.head, config.head_hidden)
              - head_rewards(state, rejected, config.head, config.head_hidden))
    flipped = margin < 0
    return np.where(flipped, flip_labels(human_label), human_label).astype(object), flipped
