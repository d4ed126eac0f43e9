"""One RLTHF selection step (paper sections 3.2.4 and 3.2.5): flip, pick the human batch, rebuild the training set.

Pure numpy. Positions index the shard's pairs (as in the margins given to ``analyze_curve``); ranks index the
sorted curve. One iteration, given the curve of the last reward model over the shard under its working labels:

(a) **flip**: every pair at or past the reflection point that no human has labelled gets the other label;
    the reward model disagrees with its label as strongly as it agrees with the elbow's.
(b) **annotate**: ``annotation_size`` pairs no human has labelled, starting just left of the reflection point
    and moving left toward (and, when the batch is larger than that stretch, past) the knee; pairs at or past
    the reflection point come last, only when nothing else is left.
(c) **train**: every human-labelled pair (this batch included) repeated ``amplification`` (alpha) times, plus
    the other pairs ranked left of ``(1 - backoff) * knee_index`` (beta backs off from the knee: the region
    between elbow and knee has accuracy near 50%).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rlthf.core.curve import CurveAnalysis


@dataclass(frozen=True)
class Selection:
    flip: np.ndarray  # positions whose working label is flipped
    annotate: np.ndarray  # positions sent to humans, in the order they were picked
    train: np.ndarray  # positions of the next training set; a human-labelled pair appears `repeats` times
    train_cutoff_rank: int  # non-human pairs ranked below this enter training
    repeats: int  # copies of each human-labelled pair

    def summary(self) -> dict:
        return {"flipped": len(self.flip), "annotated": len(self.annotate), "train_rows": len(self.train),
                "train_cutoff_rank": self.train_cutoff_rank, "repeats": self.repeats}


def schedule_value(schedule: Sequence[float], iteration: int) -> float:
    """The value of an alpha/beta schedule at ``iteration`` (1-based); the last entry repeats.

    >>> [schedule_value([0.6, 0.6, 0.6, 0.4, 0.2, 0.1], k) for k in (1, 4, 6, 9)]
    [0.6, 0.4, 0.1, 0.1]
    """
    if iteration < 1:
        raise ValueError(f"schedules start at iteration 1, got {iteration}")
    if len(schedule) == 0:
        raise ValueError("a schedule needs at least one value")
    return float(schedule[min(iteration, len(schedule)) - 1])


def annotation_batch_size(n_pairs: int, annotation_fraction: float) -> int:
    """Pairs sent to humans in one iteration: ``round(annotation_fraction * n_pairs)``."""
    return int(round(annotation_fraction * n_pairs))


def select_pairs(
    analysis: CurveAnalysis,
    human_labelled,
    *,
    annotation_size: int,
    amplification: float,
    backoff: float,
    flip: bool = True,
    annotation_order=None,
    trainable=None,
) -> Selection:
    """Flip, annotation batch and next training set for one iteration.

    Parameters
    ----------
    analysis : CurveAnalysis
        The curve of the shard under its current working labels.
    human_labelled : array-like of bool, shape (n,)
        True for pairs a human has already labelled (by position).
    annotation_size : int
        Pairs to send to humans now (fewer when fewer are unlabelled).
    amplification : float
        alpha: copies of each human-labelled pair in the training set (rounded, at least 1).
    backoff : float
        beta in [0, 1): non-human pairs enter training only when ranked below ``(1 - beta) * knee_index``.
    flip : bool, default=True
        Whether to flip pairs past the reflection point (off for the no-flip ablation).
    annotation_order : array-like of int, optional
        Positions in the order another selector would send them to humans (``rlthf.core.selectors``); the batch is
        the first ``annotation_size`` of them no human has labelled. None: RLTHF's order, leftward from the
        reflection point (b). Flips and the training set are RLTHF's either way, so selectors differ in the
        batch alone.
    trainable : array-like of bool, shape (n,), optional
        Pairs whose working label may train the next model when no human labelled them (default: all). With
        ``selection.train_on_rm_labels: false`` a run leaves out the labels reward model 0 gave the pairs the AI
        left unlabelled, so no model is fitted to an earlier model's guesses (the paper trains on the LLM's
        labels only).
    """
    human = np.asarray(human_labelled, dtype=bool)
    n = analysis.n
    if human.shape != (n,):
        raise ValueError(f"human_labelled has shape {human.shape}, the curve has {n} pairs")
    trainable = _trainable_mask(trainable, n)
    if not 0 <= backoff < 1:
        raise ValueError(f"backoff must be in [0, 1), got {backoff}")
    if annotation_size < 0:
        raise ValueError(f"annotation_size must be >= 0, got {annotation_size}")

    order = analysis.order
    reflection = analysis.reflection_index
    human_by_rank = human[order]

    flip_ranks = np.flatnonzero(~human_by_rank[reflection:]) + reflection if flip else np.empty(0, np.int64)

    if annotation_order is None:
        left = np.arange(reflection - 1, -1, -1)  # from the reflection point leftwards
        right = np.arange(reflection, n)  # the flipped tail, only as a last resort
        candidates = np.concatenate([left, right]).astype(np.int64)
    else:
        candidates = analysis.ranks[_checked_order(annotation_order, n)]
    candidates = candidates[~human_by_rank[candidates]]
    annotate_ranks = candidates[:annotation_size]

    human_after = human_by_rank.copy()
    human_after[annotate_ranks] = True
    cutoff = int(np.floor((1.0 - backoff) * analysis.knee_index))
    repeats = max(1, int(round(amplification)))
    machine_ranks = np.flatnonzero(~human_after[:cutoff] & trainable[order][:cutoff])
    human_ranks = np.flatnonzero(human_after)
    train_ranks = np.concatenate([machine_ranks, np.repeat(human_ranks, repeats)])

    return Selection(flip=order[flip_ranks], annotate=order[annotate_ranks], train=order[np.sort(train_ranks)],
                     train_cutoff_rank=cutoff, repeats=repeats)


def _trainable_mask(trainable, n: int) -> np.ndarray:
    mask = np.ones(n, dtype=bool) if trainable is None else np.asarray(trainable, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"trainable has shape {mask.shape}, the curve has {n} pairs")
    return mask


def _checked_order(order, n: int) -> np.ndarray:
    order = np.asarray(order, dtype=np.int64)
    if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(f"annotation_order must be a permutation of the {n} positions, got shape {order.shape}")
    return order


def select_random(n: int, human_labelled, *, annotation_size: int, seed: int, trainable=None) -> Selection:
    """The paper's *Random* baseline (appendix C.3): the same number of human labels, drawn uniformly from the
    pairs no human has labelled, on top of the AI labels; no flips, no amplification, no back-off (every pair
    trains once, but for those not ``trainable`` that no human labelled, as in :func:`select_pairs`)."""
    human = np.asarray(human_labelled, dtype=bool)
    if human.shape != (n,):
        raise ValueError(f"human_labelled has shape {human.shape}, expected ({n},)")
    trainable = _trainable_mask(trainable, n)
    candidates = np.flatnonzero(~human)
    annotate = np.random.default_rng(seed).choice(candidates, size=min(annotation_size, len(candidates)),
                                                  replace=False)
    human_after = human.copy()
    human_after[annotate] = True
    return Selection(flip=np.empty(0, np.int64), annotate=np.sort(annotate),
                     train=np.flatnonzero(human_after | trainable), train_cutoff_rank=n, repeats=1)



def decayed_schedule(start: float, decay: float, floor: float, length: int) -> list[float]:
    """A schedule that starts at ``start`` and decays geometrically to ``floor``: ``max(floor, start * decay**i)``
    for iterations ``i = 0 .. length - 1`` (rounded to 4 decimals); the form Ray Tune searches (rlthf/tune.py).

    >>> decayed_schedule(0.8, 0.5, 0.1, 5)
    [0.8, 0.4, 0.2, 0.1, 0.1]
    """
    if length < 1:
        raise ValueError(f"a schedule needs at least one value, got length {length}")
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    return [round(max(floor, start * decay ** i), 4) for i in range(length)]


# --- the human-label budget ---------------------------------------------------------------------------------

BUDGET_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def budget_labels(budget: int | str | None, corpus_size: int) -> int | None:
    """The human-label budget as a count: ``120`` stays 120, ``"5%"`` is 5% of the corpus rounded down, None is
    no budget."""
    if budget is None:
        return None
    if isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0:
        return budget
    match = BUDGET_PATTERN.match(budget) if isinstance(budget, str) else None
    if match is None or float(match.group(1)) > 100:
        raise ValueError(f"a budget is a count >= 0 or a percentage of the corpus like '5%'; got {budget!r}")
    return int(float(match.group(1)) * corpus_size // 100)


def cap_to_budget(wanted: int, budget: int | str | None, *, corpus_size: int, used: int) -> int:
    """How many of ``wanted`` new human labels the budget still allows after ``used`` (never below 0)."""
    cap = budget_labels(budget, corpus_size)
    return wanted if cap is None else max(0, min(wanted, cap - used))
