"""Preference labels and the columns of a pair: the vocabulary every layer shares.

A label is ``"a"`` or ``"b"``: which response of a pair is preferred. ``None`` means no label.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

LABELS = ("a", "b")
# The text of a pair, as every step that reads or shows one needs it.
PAIR_TEXT = ("id", "prompt", "response_a", "response_b")
# A pair after loading: its text, the dataset's own preference and the working label with its source.
PAIR_COLUMNS = PAIR_TEXT + ("human_label", "label", "label_source")
LABEL_COLUMNS = ("human_label", "label", "label_source")


def hash_unit(seed: int, salt: str, ids: Iterable[str]) -> np.ndarray:
    """Deterministic uniform floats in [0, 1), one per id.

    Each value comes from sha256 of ``f"{seed}:{salt}:{id}"``, so it depends on neither the order of ``ids`` nor
    Python's hash seed; ``salt`` keeps the draws of different decisions (a/b order, split, shard) independent.
    """
    if isinstance(ids, str):
        raise TypeError("ids must be a collection of ids, not one string")
    # The top 53 bits fill a float64 mantissa exactly, so the result is never rounded up to 1.0.
    # (a generator, not a list: a million Python ints would cost tens of MB)
    top_bits = np.fromiter((int.from_bytes(hashlib.sha256(f"{seed}:{salt}:{i}".encode()).digest()[:8], "big") >> 11
                            for i in ids), dtype=np.uint64)
    return top_bits.astype(np.float64) / 2.0**53


def objects_where(condition, if_true, if_false) -> np.ndarray:
    """``np.where`` into an object array of labels (or sources) in which a string given as a value stays one
    shared Python object. numpy's own ``where`` (and ``full``) copies a string through its unicode dtype into a
    new object per element, about 50 bytes each: 50 MB for a million pairs' labels."""
    return np.where(condition, _one_object(if_true), _one_object(if_false))


def objects_full(size: int, value) -> np.ndarray:
    """An object array of ``size`` elements that all hold ``value`` (one object: see :func:`objects_where`)."""
    out = np.empty(size, dtype=object)
    out[:] = _one_object(value)
    return out


def _one_object(value):
    return np.asarray(value, dtype=object) if isinstance(value, str) else value


def flip_labels(labels) -> np.ndarray:
    labels = np.asarray(labels).astype(str)
    return objects_where(labels == "a", "b", "a")


def label_sign(labels) -> np.ndarray:
    """+1 where a is preferred, -1 where b is: the paper's lambda."""
    return np.where(np.asarray(labels).astype(str) == "a", 1.0, -1.0)


def rm_labels(reward_a, reward_b) -> np.ndarray:
    """The label a reward model gives: the response with the higher reward (a on a tie)."""
    return objects_where(np.asarray(reward_a) >= np.asarray(reward_b), "a", "b")


def checked_labels(label) -> np.ndarray:
    """A label column as a str array of 'a'/'b'; anything else is an error naming the first bad value."""
    values = np.asarray(label, dtype=object)
    bad = [v for v in values if v not in LABELS]
    if bad:
        raise ValueError(f"label must be 'a' or 'b', got {bad[0]!r}")
    return values.astype(str)


# What a judge's verdict column may hold besides null: a tie (or no verdict) in that order is no label.
VERDICTS = LABELS + ("tie",)


def combine_orders(first, swapped=None) -> tuple[np.ndarray, np.ndarray]:
    """One label per pair from a judge's verdicts in the shown order and, optionally, with a and b swapped.

    The rule is :func:`rlthf.judges.labeling.aggregate_verdicts`' for a judge without log-probabilities, with
    'tie' and None both meaning "no verdict in this order" (the live judge's parser never reads a tie):

    ============  ============  =======  ==========
    first         swapped       label    consistent
    ============  ============  =======  ==========
    'a'           'a'           'a'      True
    'a'           'b'           None     False       (the orders disagree: a guess would be position bias)
    'a'           'tie'/None    'a'      False       (one order only: aggregate_verdicts' "single")
    'tie'/None    'tie'/None    None     False
    ============  ============  =======  ==========

    and symmetrically. Without ``swapped`` the label is ``first`` where it is 'a' or 'b', and no pair is
    consistent (only one order was asked). ``np.where(consistent, label, None)`` keeps the agreeing pairs only.

    Parameters
    ----------
    first : array-like of {'a', 'b', 'tie', None}
        The verdict with the responses in the pair's a/b order.
    swapped : array-like of {'a', 'b', 'tie', None}, optional
        The verdict with b shown first, already mapped back to a/b; same length as ``first``.

    Returns
    -------
    label : np.ndarray of object
        'a', 'b' or None per pair.
    consistent : np.ndarray of bool
        True where both orders gave the same label.

    Raises
    ------
    ValueError
        On a value outside {'a', 'b', 'tie', None} (naming the argument, the position and the value), or when the
        two arrays differ in length.
    """
    first_votes = _votes(first, "first")
    if swapped is None:
        return first_votes, np.zeros(len(first_votes), dtype=bool)
    swapped_votes = _votes(swapped, "swapped")
    if len(swapped_votes) != len(first_votes):
        raise ValueError(f"first and swapped differ in length: {len(first_votes)} and {len(swapped_votes)}")
    first_known = np.array([v is not None for v in first_votes], dtype=bool)
    swapped_known = np.array([v is not None for v in swapped_votes], dtype=bool)
    consistent = first_known & swapped_known & (first_votes == swapped_votes)
    label = np.full(len(first_votes), None, dtype=object)
    label[consistent] = first_votes[consistent]
    label[first_known & ~swapped_known] = first_votes[first_known & ~swapped_known]
    label[swapped_known & ~first_known] = swapped_votes[swapped_known & ~first_known]
    return label, consistent


def _votes(verdicts, name: str) -> np.ndarray:
    """'a'/'b' where a verdict is a label, None where it is 'tie', None or NaN; a ValueError on anything else."""
    if isinstance(verdicts, str):
        raise TypeError(f"{name} must be a collection of verdicts, not one string")
    values = np.asarray(verdicts, dtype=object).ravel()
    votes = np.full(len(values), None, dtype=object)
    for position, value in enumerate(values):
        if isinstance(value, str) and value in LABELS:
            votes[position] = value
        elif not (value == "tie" if isinstance(value, str) else _is_null(value)):
            raise ValueError(f"{name}[{position}]: expected 'a', 'b', 'tie' or None, got {value!r}")
    return votes


def _is_null(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))
