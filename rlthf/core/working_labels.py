"""The shard's working labels across iterations: the rules the run applies between its file writes.

A labels frame has one row per shard pair, in shard order:

    id               the pair
    label            the working label, 'a' or 'b' (None where nothing labelled the pair yet)
    label_source     'ai', 'rm' (reward model 0 filled a pair the AI left unlabelled), 'flipped' or 'human'
    ai_label         the initial label (the AI's, or model 0's where the AI gave none)
    initial_source   'ai' or 'rm': where ai_label came from
    human_iteration  the iteration whose humans labelled the pair (0: eyes-off validation), -1 for none
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from rlthf.core.labels import flip_labels, rm_labels

LABEL_FRAME_COLUMNS = ("id", "label", "label_source", "ai_label", "initial_source", "human_iteration")


def initial_labels_frame(ids, ai_label) -> pd.DataFrame:
    """Iteration 0's labels frame: the AI's label on every pair (None where it gave none)."""
    ai_label = list(ai_label)  # object columns: None stays None (pandas would make a string column with NaN)
    return pd.DataFrame({"id": np.asarray(ids), "label": pd.Series(ai_label, dtype=object), "label_source": "ai",
                         "ai_label": pd.Series(ai_label, dtype=object), "initial_source": "ai",
                         "human_iteration": -1})


def fill_unlabelled(labels: pd.DataFrame, reward_a, reward_b) -> tuple[pd.DataFrame, np.ndarray]:
    """Pairs the AI left unlabelled take the reward model's label (source 'rm'); returns the frame and the mask
    of filled pairs."""
    new = labels.copy()
    gaps = new["label"].isna().to_numpy()
    filled = rm_labels(reward_a, reward_b)[gaps]
    for column in ("label", "ai_label"):
        values = new[column].to_numpy().astype(object)
        values[gaps] = filled
        new[column] = values
    for column in ("label_source", "initial_source"):
        new.loc[gaps, column] = "rm"
    return new, gaps


def eyes_off_positions(curve_order: np.ndarray, elbow_index: int, ai_labelled: np.ndarray, count: int,
                       seed: int) -> np.ndarray:
    """Eyes-off validation (paper 3.2.3): ``count`` positions drawn at random from the upper left of the curve,
    the pairs ranked above the elbow (at least ``count`` of them), among those the AI itself labelled."""
    ai_ranked = curve_order[ai_labelled[curve_order]]  # it checks the AI's labels, not model 0's
    head = ai_ranked[:max(elbow_index, count)]
    return np.sort(np.random.default_rng(seed).choice(head, size=count, replace=False))


def with_flips(labels: pd.DataFrame, flip) -> pd.DataFrame:
    """Flip the working label at positions ``flip``. A label that differs from the initial one is 'flipped'
    (one flipped back is its initial source again); human labels stay human."""
    new = labels.copy()
    label = new["label"].to_numpy().astype(object)
    flip = np.asarray(flip, dtype=np.int64)
    label[flip] = flip_labels(label[flip])
    source = np.where(label == new["ai_label"].to_numpy(), new["initial_source"], "flipped").astype(object)
    source[new["label_source"].to_numpy() == "human"] = "human"
    new["label"], new["label_source"] = label, source
    return new


def with_answers(labels: pd.DataFrame, positions, answers, iteration: int) -> pd.DataFrame:
    """The humans' ``answers`` (aligned with ``positions``) become the working labels there, source 'human'."""
    new = labels.copy()
    positions = np.asarray(positions, dtype=np.int64)
    label = new["label"].to_numpy().astype(object)
    label[positions] = np.asarray(answers, dtype=object)
    source = new["label_source"].to_numpy().astype(object)
    source[positions] = "human"
    human_iteration = new["human_iteration"].to_numpy().copy()
    human_iteration[positions] = iteration
    new["label"], new["label_source"], new["human_iteration"] = label, source, human_iteration
    return new
