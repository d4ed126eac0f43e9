"""Reward-curve analysis (paper section 3.2.2-3.2.4): the sorted margins, their elbow, knee and reflection point.

Pure numpy. Given, for every pair of a shard, the reward margin under its current label,
``reward_margin = r(chosen) - r(rejected)``, sort the margins in descending order: that is the reward
distribution curve. Its upper-left head holds pairs whose label the reward model agrees with strongly
(mostly correct AI labels), its lower-right tail pairs it strongly disagrees with (mostly wrong labels).

The rule, exactly:

1. ``order = argsort(-margins, stable)``; ``curve = margins[order]``; ranks count from 0 at the top.
2. ``drop[i] = curve[i] - curve[i + 1] >= 0`` is the curve's first derivative (with the sign turned) between
   ranks ``i`` and ``i + 1``; it is smoothed by a centred moving average of ``w`` drops,
   ``w = max(1, 2 * floor(smoothing * n / 2) + 1)`` (odd), padding each end with its edge value.
3. A drop is *steep* when the smoothed drop exceeds ``threshold = steepness_factor * median(smoothed drop)``.
4. **elbow_index** = the first rank ``i`` whose smoothed drop is not steep: the steep head has turned flat.
5. **knee_index** = ``j + 1`` for the last rank ``j`` whose smoothed drop is not steep: the last rank of the
   flat body, after which the steep fall begins.
6. **reflection_index** = the first rank whose margin is below ``-curve[elbow_index]`` (the elbow reflected
   across the x axis), but never left of ``knee_index + 1`` (paper: the reflection point lies right of the
   knee). ``reflection_index == n`` means no pair lies past the reflection point.

**Kneedle** (``knee_detector="kneedle"``, through the ``kneed`` package) replaces steps 2-5 by Satopaa et al.'s
detector: split the curve at its flattest point (the middle one of the ranks whose smoothed drop is the
smallest), then **elbow_index** = Kneedle's point of maximum curvature of the head (``curve="convex",
direction="decreasing"`` on ranks ``0..split``) and **knee_index** = that of the tail (``curve="concave",
direction="decreasing"`` on ranks ``split..n-1``); a piece where Kneedle finds no point falls back to 0 (elbow)
or ``n - 1`` (knee). Step 6 is unchanged.

Fallbacks, so that every curve gets an answer a loop can act on:

- fewer than ``min_points`` margins (slopes of so few points are noise): the *sign* rule, ``elbow_index = 0``,
  ``knee_index`` = the last rank with a margin >= 0 (0 if there is none), reflection as in step 6;
- a flat curve (all margins tied): no drop is steep, so ``elbow_index = 0`` and ``knee_index = n - 1``;
- no steep head or no steep tail: the elbow is 0 or the knee is ``n - 1``, by the same rule;
- an elbow margin <= 0 (the model agrees with almost no label): its reflection would flip the body of the
  curve, so ``reflection_index = n`` (flip nothing);
- ties keep their input order (the sort is stable), so the result is deterministic;
- NaN or infinite margins, or no margins: ``ValueError`` naming the first bad position (or pair id).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class CurveAnalysis:
    """The reward distribution curve of one shard and its landmarks (ranks into the sorted curve)."""

    order: np.ndarray  # order[rank] = position of that pair in the input
    sorted_margins: np.ndarray
    elbow_index: int
    knee_index: int
    reflection_index: int
    smoothed_drop: np.ndarray  # length n - 1 (empty for the sign fallback)
    threshold: float
    method: str  # "derivative" or "sign"

    @property
    def n(self) -> int:
        return len(self.order)

    @property
    def ranks(self) -> np.ndarray:
        """ranks[position] = rank of the input's pair at ``position`` (the inverse of ``order``)."""
        ranks = np.empty(self.n, dtype=np.int64)
        ranks[self.order] = np.arange(self.n)
        return ranks

    @property
    def elbow_margin(self) -> float:
        return float(self.sorted_margins[self.elbow_index])

    @property
    def knee_margin(self) -> float:
        return float(self.sorted_margins[self.knee_index])

    def summary(self) -> dict:
        return {"n": self.n, "elbow_index": self.elbow_index, "knee_index": self.knee_index,
                "reflection_index": self.reflection_index, "elbow_margin": self.elbow_margin,
                "knee_margin": self.knee_margin, "threshold": self.threshold, "method": self.method}


def check_finite(margins: np.ndarray, ids: Optional[Sequence] = None) -> None:
    bad = np.flatnonzero(~np.isfinite(margins))
    if len(bad):
        where = f"pair {ids[bad[0]]!r}" if ids is not None else f"position {bad[0]}"
        raise ValueError(f"reward_margin of {where} is {margins[bad[0]]} ({len(bad)} non-finite margins in all); "
                         "the reward model diverged or a score is missing")


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over an odd ``window``, each end padded with its edge value."""
    if window <= 1 or len(values) == 0:
        return values.astype(float)
    half = window // 2
    padded = np.pad(values.astype(float), half, mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def analyze_curve(
    margins,
    *,
    smoothing: float = 0.02,
    steepness_factor: float = 2.0,
    min_points: int = 50,
    knee_detector: str = "derivative",
    ids: Optional[Sequence] = None,
) -> CurveAnalysis:
    """Sort margins into the reward distribution curve and find its elbow, knee and reflection point.

    Parameters
    ----------
    margins : array-like of float, shape (n,)
        ``r(chosen) - r(rejected)`` of every pair under its current label.
    smoothing : float, default=0.02
        Moving-average window of the slope, as a fraction of ``n`` (0: no smoothing).
    steepness_factor : float, default=2.0
        A smoothed drop is steep above ``steepness_factor`` times the median smoothed drop.
    min_points : int, default=50
        Below this many margins the sign fallback is used (see the module docstring).
    knee_detector : {'derivative', 'kneedle'}, default='derivative'
        How the elbow and knee are found: the smoothed-slope threshold, or Kneedle (see the module docstring).
    ids : sequence, optional
        Pair ids, only to name a bad margin in the error.

    Returns
    -------
    CurveAnalysis
    """
    if knee_detector not in KNEE_DETECTORS:
        raise ValueError(f"knee_detector must be one of {', '.join(KNEE_DETECTORS)}, got {knee_detector!r}")
    margins = np.asarray(margins, dtype=float)
    if margins.ndim != 1 or len(margins) == 0:
        raise ValueError(f"margins must be a non-empty 1-d array, got shape {margins.shape}")
    check_finite(margins, ids)
    n = len(margins)
    order = np.argsort(-margins, kind="stable")
    curve = margins[order]

    if n < max(3, min_points):
        elbow = 0
        knee = max(int(np.sum(curve >= 0)) - 1, 0)
        smoothed, threshold, method = np.empty(0), float("nan"), "sign"
    else:
        drop = curve[:-1] - curve[1:]
        window = max(1, 2 * int(smoothing * n / 2) + 1)
        smoothed = smooth(drop, window)
        threshold = float(steepness_factor * np.median(smoothed))
        if knee_detector == "kneedle":
            flattest = np.flatnonzero(smoothed == smoothed.min())
            elbow, knee = kneedle_landmarks(curve, int(flattest[len(flattest) // 2]))
        else:
            flat = np.flatnonzero(smoothed <= threshold)  # never empty: the median itself is not steep
            elbow, knee = int(flat[0]), int(flat[-1]) + 1
        method = knee_detector

    reflection = reflection_index(curve, elbow, knee)
    return CurveAnalysis(order=order, sorted_margins=curve, elbow_index=elbow, knee_index=knee,
                         reflection_index=reflection, smoothed_drop=smoothed, threshold=threshold, method=method)


KNEE_DETECTORS = ("derivative", "kneedle")


def kneedle_landmarks(curve: np.ndarray, split: int) -> tuple[int, int]:
    """Kneedle's elbow of ``curve[:split + 1]`` (convex, decreasing) and knee of ``curve[split:]`` (concave,
    decreasing), as ranks of the whole curve; 0 and ``n - 1`` where a piece has none."""
    from kneed import KneeLocator

    n = len(curve)
    ranks = np.arange(n, dtype=float)

    def locate(lo: int, hi: int, shape: str) -> Optional[int]:
        if hi - lo < 2 or curve[lo] == curve[hi - 1]:  # too short or flat: nothing to find
            return None
        knee = KneeLocator(ranks[lo:hi], curve[lo:hi], curve=shape, direction="decreasing").knee
        return None if knee is None else int(round(knee))

    elbow = locate(0, split + 1, "convex")
    knee = locate(split, n, "concave")
    elbow = 0 if elbow is None else elbow
    knee = n - 1 if knee is None else knee
    return elbow, max(knee, elbow)


def reflection_index(curve: np.ndarray, elbow_index: int, knee_index: int) -> int:
    """First rank below the elbow's margin reflected across zero, never left of ``knee_index + 1``."""
    n = len(curve)
    elbow_margin = curve[elbow_index]
    if elbow_margin <= 0:
        return n
    below = np.flatnonzero(curve < -elbow_margin)
    first = int(below[0]) if len(below) else n
    return min(max(first, knee_index + 1), n)
