"""Other active-learning selectors of the human batch, behind RLTHF's selection interface (issue 7).

RLTHF picks the human batch leftward from the reflection point of the reward curve (``rlthf.core.selection``). The
selectors here only change *which* pairs go to humans: each returns a priority, the shard's positions in the
order a human should see them, and ``select_pairs(..., annotation_order=priority)`` takes the first
``annotation_size`` of them no human has labelled. Flips past the reflection point, amplification (alpha) and
back-off (beta) stay RLTHF's, and the budget per iteration is the same, so a comparison measures the selection
alone. Pure numpy except ``confident_learning_order``, which imports cleanlab when called.

- ``uncertainty``: smallest ``|margin|`` of the last reward model first (the pairs it is least sure about).
- ``qbc`` (query by committee): a committee of reward heads votes on every pair (``a`` where its margin
  ``r(a) - r(b)`` is positive); the disagreement ``min(votes_a, votes_b) / members`` ranks pairs, largest first,
  ties broken by the smallest ``|mean margin|``.
- ``confident_learning``: cleanlab's ``find_label_issues`` on *out-of-fold* probabilities (a model that saw a
  pair's label cannot say it is wrong); its issues first, ranked by self-confidence, then every other pair by
  ascending label-quality score (``cleanlab.rank.get_label_quality_scores``).

Every order is a stable sort: ties keep position order, so a selection is deterministic.
"""
from __future__ import annotations

import numpy as np

SELECTORS = ("rlthf", "random", "uncertainty", "qbc", "confident_learning", "oracle")


def uncertainty_order(margins) -> np.ndarray:
    """Positions by ascending ``|margin|`` (``margin = r(a) - r(b)`` or under the label: the same magnitude).

    >>> uncertainty_order([3.0, -0.5, 0.1, -2.0]).tolist()
    [2, 1, 3, 0]
    """
    margins = _finite_1d(margins, "margins")
    return np.argsort(np.abs(margins), kind="stable")


def committee_disagreement(committee_margins) -> np.ndarray:
    """``min(votes_a, votes_b) / members`` per pair, in [0, 0.5]; rows are members, columns pairs."""
    m = np.asarray(committee_margins, dtype=float)
    if m.ndim != 2 or m.shape[0] < 2 or m.shape[1] == 0:
        raise ValueError(f"committee_margins must have shape (members >= 2, n >= 1), got {m.shape}")
    _finite_1d(m.ravel(), "committee_margins")
    votes_a = (m > 0).mean(axis=0)
    return np.minimum(votes_a, 1.0 - votes_a)


def committee_order(committee_margins) -> np.ndarray:
    """Positions by descending committee disagreement, ties by ascending ``|mean margin|``.

    >>> committee_order([[1.0, 2.0, -1.0, 0.5], [1.0, -2.0, -1.0, -0.1], [1.0, 1.0, -1.0, 0.2]]).tolist()
    [3, 1, 0, 2]
    """
    m = np.asarray(committee_margins, dtype=float)
    disagreement = committee_disagreement(m)
    return np.lexsort((np.abs(m.mean(axis=0)), -disagreement))  # the last key sorts first; lexsort is stable


def confident_learning_order(labels, prob_a, *, filter_by: str = "prune_by_noise_rate") -> np.ndarray:
    """Positions ordered by cleanlab: label issues first (ranked by self-confidence), then the rest by quality.

    Parameters
    ----------
    labels : array-like of {'a', 'b'}, shape (n,)
        The working labels.
    prob_a : array-like of float, shape (n,)
        Out-of-fold probability that ``a`` is preferred (``sigmoid(r(a) - r(b))`` of a head that never saw the
        pair); in-sample probabilities make every label look right.
    filter_by : {'prune_by_noise_rate', 'prune_by_class', 'both', 'confident_learning', 'predicted_neq_given'}
        cleanlab's rule for which pairs are issues; default='prune_by_noise_rate'.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels).astype(str)
    prob_a = _finite_1d(prob_a, "prob_a")
    if labels.shape != prob_a.shape:
        raise ValueError(f"labels has shape {labels.shape}, prob_a {prob_a.shape}")
    if not set(np.unique(labels)) <= {"a", "b"}:
        raise ValueError(f"labels must be 'a' or 'b', got {sorted(set(np.unique(labels)) - {'a', 'b'})[0]!r}")
    if ((prob_a < 0) | (prob_a > 1)).any():
        raise ValueError("prob_a must lie in [0, 1]")
    y = (labels == "b").astype(int)
    pred_probs = np.column_stack([prob_a, 1.0 - prob_a])
    issues = np.asarray(find_label_issues(y, pred_probs, filter_by=filter_by,
                                          return_indices_ranked_by="self_confidence"), dtype=np.int64)
    quality = get_label_quality_scores(y, pred_probs, method="self_confidence")
    rest = np.setdiff1d(np.argsort(quality, kind="stable"), issues, assume_unique=True)
    rest = rest[np.argsort(quality[rest], kind="stable")]
    return np.concatenate([issues, rest])


def _finite_1d(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty 1-d array, got shape {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise ValueError(f"{name}[{bad[0]}] is {values[bad[0]]}")
    return values


def rlthf_order(order: np.ndarray, reflection_index: int) -> np.ndarray:
    """RLTHF's own priority as positions: leftward from the reflection point (ranks ``reflection - 1`` down to
    0), then the flipped tail; ``order`` is the curve's sort order (``CurveAnalysis.order``)."""
    ranks = np.concatenate([np.arange(reflection_index - 1, -1, -1), np.arange(reflection_index, len(order))])
    return np.asarray(order)[ranks.astype(np.int64)]


def suspicious_first(priority, suspicious, window: int) -> np.ndarray:
    """``priority`` with the suspicious positions among its first ``window`` moved to the front (stable): the
    judge's own doubt (its two orders disagreed, or only one gave a verdict) ranks pairs inside the region the
    reward curve targets, and never pulls in pairs from outside it."""
    suspicious = np.asarray(suspicious, dtype=bool)
    return doubtful_first(priority, suspicious.astype(float), window, "suspicious")


def least_confident_first(priority, judge_margin, window: int) -> np.ndarray:
    """``priority`` with its first ``window`` positions reordered by the judge's confidence, least first: the
    magnitude of its log-probability margin ``|lp(a) - lp(b)|`` (summed over both orders, so position bias
    cancels). A pair without a margin (NaN: one order failed, no log-probs) counts as the least confident. Pairs
    of equal confidence keep the curve's order; the tail past the window is untouched.

    >>> least_confident_first([4, 0, 3, 1, 2], [0.1, 5.0, -2.0, np.nan, 0.5], 3).tolist()
    [3, 0, 4, 1, 2]
    """
    margin = np.asarray(judge_margin, dtype=float)
    return doubtful_first(priority, np.where(np.isnan(margin), np.inf, -np.abs(margin)), window, "judge_margin")


def doubtful_first(priority, doubt, window: int, name: str = "doubt") -> np.ndarray:
    """The first ``window`` positions of ``priority`` by descending ``doubt`` (per position; stable), then the
    rest of ``priority`` as it was."""
    priority = np.asarray(priority, dtype=np.int64)
    doubt = np.asarray(doubt, dtype=float)
    if doubt.shape != priority.shape:
        raise ValueError(f"{name} has shape {doubt.shape}, the priority has {priority.shape}")
    head, tail = priority[:max(0, window)], priority[max(0, window):]
    return np.concatenate([head[np.argsort(-doubt[head], kind="stable")], tail])


def oracle_order(labels, truth, draws) -> np.ndarray:
    """The ceiling of any selector: the pairs whose working label is wrong first, each group in the order of
    ``draws`` (seeded uniform numbers). Needs the ground truth, so it exists only for studies."""
    wrong = np.asarray(labels).astype(str) != np.asarray(truth).astype(str)
    draws = _finite_1d(draws, "draws")
    return np.lexsort((draws, ~wrong)).astype(np.int64)
