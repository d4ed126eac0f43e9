"""The audit: honest accuracy estimates of any labelling of the corpus, without ground truth.

At the end of a run, before curation, humans label a uniform random sample of the pairs no human has labelled
yet (:func:`audit_sample`). The corpus then splits into

- K, the pairs with a human label (the targeted ones and the audited ones): whether a labelling is right there
  is known exactly;
- U, the rest: the audit, being a uniform sample of U plus itself, estimates the labelling's accuracy on U by
  its own proportion ``p_hat``.

The corpus accuracy is ``(correct_in_K + |U| * p_hat) / N``, unbiased. Its interval is for the accuracy on U,
itself one draw: the audit and U split one pool at random, so ``p_hat - p_U`` varies as ``p(1 - p) (1/n + 1/|U|)``,
not ``p(1 - p) / n``; the Wilson interval of ``p_hat`` at that effective size ``n |U| / (n + |U|)`` is mapped
through the same affine function (:func:`corpus_accuracy`). Labels fitted on the audit itself (a curated set
whose rule replaced labels) vary more than that: their bootstrap's errors widen the interval
(``share_errors``). Human labels are taken as the truth: every accuracy here is agreement with the annotators.

Typical use (``human_label`` gets the audit's labels before the estimates)::

    audited = audit_sample(hash_unit(seed, "audit", ids), no_human_label, size)  # positions
    ai = estimate_accuracy(ai_label, human_label, audited)
    # the RM on the pairs it would label: those without a human label before the audit
    pool = no_human_label
    rm = estimate_accuracy(rm_label[pool], human_label[pool], np.isin(np.flatnonzero(pool), audited))
    # the curated set: the human label on K; on the audit, the label the curation rule gives without it
    curated = curate(base_label, rm_margin, human_label, audited)
    estimate = estimate_accuracy(curated.label, human_label, audited, audit_labels=curated.rule_label,
                                 audit_errors=curated.audit_errors)
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from rlthf.core.metrics import wilson_interval


@dataclass(frozen=True)
class AccuracyEstimate:
    """An accuracy over ``pairs`` pairs: exact on the human-labelled ones, estimated from the audit on the rest."""

    value: float  # the estimate; NaN when pairs are left to estimate and no audit pair estimates them
    low: float  # the interval's bounds; without audit pairs, the unaudited pairs all wrong / all right
    high: float
    pairs: int  # known_pairs + unaudited_pairs
    known_pairs: int  # pairs with a human label (audit pairs included)
    known_correct: int
    audit_pairs: int  # the uniform sample that estimates the unaudited pairs (part of known_pairs)
    audit_correct: int
    unaudited_pairs: int
    z: float  # the interval's normal quantile (1.96: 95%)
    bootstrap_draws: int = 0  # draws of the fitted labels' error that widened the interval (0: Wilson's alone)

    def summary(self) -> dict:
        """The fields as a JSON-ready dict (NaN becomes None)."""
        return {key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in asdict(self).items()}

    def __str__(self) -> str:
        value = "unknown" if math.isnan(self.value) else f"{self.value:.3f}"
        return (f"{value} [{self.low:.3f}, {self.high:.3f}] over {self.pairs} pairs "
                f"({self.known_pairs} human-labelled, {self.audit_pairs} of them audited)")


def audit_sample(draws, eligible, size: int) -> np.ndarray:
    """The audit: the ``size`` eligible pairs with the smallest ``draws``.

    With ``draws = hash_unit(seed, "audit", ids)`` this is a seeded uniform sample that depends neither on the
    order of the pairs nor on anything else about them.

    Parameters
    ----------
    draws : array-like of float, shape (n,)
        One uniform draw per pair; ties go to the lower index.
    eligible : array-like of bool, shape (n,)
        The pairs that may be audited: those no human has labelled.
    size : int
        How many pairs to audit, at most the number of eligible pairs (the caller caps it by the human budget).

    Returns
    -------
    np.ndarray of int64
        The audited positions, ascending.

    Raises
    ------
    ValueError
        When ``draws`` is not a finite 1-D array, ``eligible`` is not a boolean array of its length, or ``size`` is
        not an integer between 0 and the number of eligible pairs.
    """
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim != 1 or not np.isfinite(draws).all():
        raise ValueError("draws must be a one-dimensional array of finite floats")
    eligible = np.asarray(eligible)
    if eligible.dtype != bool or eligible.shape != draws.shape:
        raise ValueError(f"eligible must be a boolean array of shape {draws.shape}, got {eligible.dtype} "
                         f"of shape {eligible.shape}")
    pool = np.flatnonzero(eligible)
    if not _is_count(size) or size > len(pool):
        raise ValueError(f"size must be an integer from 0 to the {len(pool)} eligible pairs, got {size!r}")
    if size == 0:
        return np.empty(0, dtype=np.int64)
    pool_draws = draws[pool]
    cutoff = np.partition(pool_draws, size - 1)[size - 1]
    below = pool[pool_draws < cutoff]
    # pool is ascending, so the ties at the cutoff that fit are the lowest-index ones
    at_cutoff = pool[pool_draws == cutoff][: size - len(below)]
    return np.sort(np.concatenate([below, at_cutoff])).astype(np.int64)


def corpus_accuracy(*, known_correct: int, known_pairs: int, audit_correct: int, audit_pairs: int,
                    unaudited_pairs: int, z: float = 1.96, share_errors=None) -> AccuracyEstimate:
    """Accuracy over ``known_pairs + unaudited_pairs`` pairs: ``(known_correct + unaudited_pairs * p_hat) / N``.

    ``p_hat = audit_correct / audit_pairs`` is unbiased for the unaudited pairs when the audit is a uniform sample
    of them and itself. The interval is the Wilson interval of ``p_hat`` at the effective size
    ``audit_pairs * unaudited_pairs / (audit_pairs + unaudited_pairs)`` (the unaudited pairs' accuracy is a draw
    too), mapped through the same affine function; the known pairs add no uncertainty. Keyword-only, because
    five counts in a row are easy to swap.

    Parameters
    ----------
    known_correct : int
        Pairs with a human label (audit pairs included) on which the evaluated label is right.
    known_pairs : int
        Pairs with a human label, audit pairs included.
    audit_correct : int
        Audit pairs on which the evaluated label (as it would be without the human label) is right.
    audit_pairs : int
        The audit's size, at most ``known_pairs``.
    unaudited_pairs : int
        Pairs without a human label.
    z : float, default=1.96
        The normal quantile of the interval (1.96: 95%).
    share_errors : array-like of float, optional
        Draws of ``p_hat`` minus the unaudited pairs' accuracy, where the evaluated labels were fitted on the
        audit (a curated set's: ``CuratedLabels.audit_errors``). The interval is then the wider of the Wilson
        interval and the bootstrap's ``p_hat - error`` at the same level (the errors' quantiles at the normal
        probabilities of ``z`` and ``-z``): the first is right where the labels are fixed, the second measures
        what the fitting adds.

    Returns
    -------
    AccuracyEstimate
        Without audit pairs, ``value`` is NaN and the interval spans all-wrong to all-right on the unaudited
        pairs; without unaudited pairs, the accuracy is exact (``low == value == high``).

    Raises
    ------
    ValueError
        Naming the count that is negative, not an integer, or larger than the count that bounds it, when there
        are no pairs at all, or when ``z`` is not positive.
    """
    counts = dict(known_correct=known_correct, known_pairs=known_pairs, audit_correct=audit_correct,
                  audit_pairs=audit_pairs, unaudited_pairs=unaudited_pairs)
    _check_counts(counts)
    pairs = known_pairs + unaudited_pairs
    if not (isinstance(z, numbers.Real) and z > 0):
        raise ValueError(f"z must be a positive number, got {z!r}")
    errors = np.empty(0) if share_errors is None else np.asarray(share_errors, dtype=np.float64)
    if errors.ndim != 1 or not np.isfinite(errors).all():
        raise ValueError("share_errors must be a one-dimensional array of finite floats")
    if unaudited_pairs == 0:
        value = low = high = known_correct / pairs
    elif audit_pairs == 0:
        value, low, high = math.nan, known_correct / pairs, (known_correct + unaudited_pairs) / pairs
    else:
        audit_share = audit_correct / audit_pairs
        effective = audit_pairs * unaudited_pairs / (audit_pairs + unaudited_pairs)
        share_low, share_high = wilson_interval(audit_share * effective, effective, z)
        if errors.size:
            upper = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
            error_low, error_high = np.quantile(errors, [1.0 - upper, upper])
            share_low = max(0.0, min(share_low, audit_share - error_high))
            share_high = min(1.0, max(share_high, audit_share - error_low))
        value, low, high = ((known_correct + unaudited_pairs * share) / pairs
                            for share in (audit_share, share_low, share_high))
    return AccuracyEstimate(value=float(value), low=float(low), high=float(high), pairs=int(pairs),
                            z=float(z), bootstrap_draws=int(errors.size),
                            **{name: int(count) for name, count in counts.items()})


def estimate_accuracy(labels, human_label, audited, *, audit_labels=None, audit_errors=None,
                      z: float = 1.96) -> AccuracyEstimate:
    """The accuracy of ``labels`` over all the pairs given, from the human labels and the audit.

    Parameters
    ----------
    labels : array-like of {'a', 'b', None}, shape (n,)
        The labels evaluated. A pair without one counts as wrong; pass only the pairs that have one to measure
        the accuracy where labelled.
    human_label : array-like of {'a', 'b', None}, shape (n,)
        The human labels, the audit's included; pairs with one are known exactly.
    audited : array-like of bool, shape (n,), or of int
        The audit pairs (a mask or positions): a uniform sample of the pairs that had no human label before it.
        Each must have a human label.
    audit_labels : array-like of {'a', 'b', None}, shape (n,), optional
        The label each audit pair would carry without its human label, when ``labels`` uses the human label there
        (for a curated set: ``CuratedLabels.rule_label`` of :func:`rlthf.core.curation.curate`); read on the audit
        pairs only.
        Default: ``labels``.
    audit_errors : array-like of float, optional
        For labels fitted on the audit: the bootstrap's errors of the audit's estimate (for a curated set:
        ``CuratedLabels.audit_errors``), the ``share_errors`` of :func:`corpus_accuracy`.
    z : float, default=1.96
        The normal quantile of the interval.

    Returns
    -------
    AccuracyEstimate
        See :func:`corpus_accuracy`.

    Raises
    ------
    ValueError
        Naming the argument whose length differs from ``labels``, which holds a value other than 'a', 'b' or None,
        or, for ``audited``, which selects a pair without a human label.
    """
    evaluated = label_codes(labels, name="labels")
    human = label_codes(human_label, name="human_label", size=len(evaluated))
    audit = selection_mask(audited, len(evaluated), name="audited")
    rule = evaluated if audit_labels is None else label_codes(audit_labels, name="audit_labels",
                                                             size=len(evaluated))
    if (human[audit] == 0).any():
        raise ValueError("audited selects pairs without a human label: the audit's labels belong in human_label")
    known = human != 0
    return corpus_accuracy(known_correct=int((evaluated[known] == human[known]).sum()), known_pairs=int(known.sum()),
                           audit_correct=int((rule[audit] == human[audit]).sum()), audit_pairs=int(audit.sum()),
                           unaudited_pairs=int((~known).sum()), z=z, share_errors=audit_errors)


def label_codes(labels, *, name: str, size: Optional[int] = None) -> np.ndarray:
    """A label column as int8 codes: +1 for 'a', -1 for 'b', 0 for no label (None or NaN).

    Raises ValueError naming ``name`` on another value, on more than one dimension, or on a length other than
    ``size``.
    """
    if isinstance(labels, str):
        raise ValueError(f"{name} must be an array of labels, not one string")
    values = np.asarray(labels, dtype=object)
    if values.ndim != 1 or (size is not None and len(values) != size):
        raise ValueError(f"{name} must be one-dimensional of length {size}, got shape {values.shape}"
                         if size is not None else f"{name} must be one-dimensional, got shape {values.shape}")
    is_a, is_b = values == "a", values == "b"
    for position in np.flatnonzero(~(is_a | is_b | np.equal(values, None))):
        value = values[position]
        if not (isinstance(value, float) and math.isnan(value)):
            raise ValueError(f"{name}[{position}] must be 'a', 'b' or None, got {value!r}")
    return is_a.astype(np.int8) - is_b.astype(np.int8)


def selection_mask(selection, size: int, *, name: str) -> np.ndarray:
    """A boolean mask of ``size`` pairs from a mask or from positions; ValueError naming ``name`` otherwise."""
    values = np.asarray(selection)
    if values.dtype == bool:
        if values.shape != (size,):
            raise ValueError(f"{name} must be a mask of shape ({size},) or positions, got shape {values.shape}")
        return values
    if values.size == 0:
        return np.zeros(size, dtype=bool)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() >= size:
        raise ValueError(f"{name} must be a boolean mask or positions in [0, {size}), got {values!r}")
    mask = np.zeros(size, dtype=bool)
    mask[values] = True
    return mask


def _check_counts(counts: dict) -> None:
    for name, count in counts.items():
        if not _is_count(count):
            raise ValueError(f"{name} must be an integer >= 0, got {count!r}")
    for part, whole in (("known_correct", "known_pairs"), ("audit_correct", "audit_pairs"),
                        ("audit_pairs", "known_pairs")):
        if counts[part] > counts[whole]:
            raise ValueError(f"{part} ({counts[part]}) exceeds {whole} ({counts[whole]})")
    if counts["known_pairs"] + counts["unaudited_pairs"] == 0:
        raise ValueError("known_pairs and unaudited_pairs are both 0: there are no pairs to estimate over")


def _is_count(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0
