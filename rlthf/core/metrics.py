"""Accuracies and their intervals."""
from __future__ import annotations

import math

import numpy as np


def wilson_interval(correct: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n`` (95% for z = 1.96); ``n`` may be an effective size."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def preference_accuracy(reward_a, reward_b, truth) -> float:
    """Share of pairs whose truly preferred response gets the higher reward (a tie counts half)."""
    margin = np.asarray(reward_a, float) - np.asarray(reward_b, float)
    sign = np.where(np.asarray(truth).astype(str) == "a", 1.0, -1.0)
    agreement = np.sign(margin * sign)
    return float(np.mean((agreement + 1) / 2))


def label_accuracy(labels, truth) -> float:
    labels, truth = np.asarray(labels).astype(str), np.asarray(truth).astype(str)
    return float(np.mean(labels == truth)) if len(labels) else float("nan")
