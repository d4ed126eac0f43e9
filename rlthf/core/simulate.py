"""Simulated labelers for experiments on data whose human labels are known.

- ``simulate_ai_labels``: the stand-in for an LLM judge. Its mistakes fall on hard pairs, as an LLM's do: each
  pair gets an error probability ``p_err = sigmoid(sharpness * z + bias)`` from its standardised hardness ``z``,
  with ``bias`` set (by bisection) so that the mean of ``p_err`` is ``1 - target_accuracy``; then exactly
  ``round((1 - target_accuracy) * n)`` pairs, drawn without replacement with weights ``p_err`` from a seeded
  generator, get the wrong label. ``noise="uniform"`` draws them with equal weights.

The hardness itself and the paper's flipped ground truth need trained reward heads: ``rlthf.reward.heads``.
"""
from __future__ import annotations

import numpy as np

from rlthf.core.labels import flip_labels




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
