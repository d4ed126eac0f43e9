"""The label rules between a run's file writes (rlthf/core/working_labels.py): exact, milliseconds."""
import numpy as np
import pandas as pd

from rlthf.core.working_labels import (LABEL_FRAME_COLUMNS, eyes_off_positions, fill_unlabelled,
                                       initial_labels_frame, with_answers, with_flips)


def frame(labels):
    return initial_labels_frame([f"p{i}" for i in range(len(labels))], labels)


def test_initial_frame_has_every_column_and_keeps_none():
    f = frame(["a", None, "b"])
    assert tuple(f.columns) == LABEL_FRAME_COLUMNS
    assert f["label"].tolist() == ["a", None, "b"] and set(f["label_source"]) == {"ai"}
    assert f["human_iteration"].tolist() == [-1, -1, -1]


def test_fill_unlabelled_takes_the_reward_models_label_and_marks_it():
    new, gaps = fill_unlabelled(frame(["a", None, None]), [0.0, 2.0, -1.0], [1.0, 1.0, 0.0])
    assert gaps.tolist() == [False, True, True]
    assert new["label"].tolist() == ["a", "a", "b"] and new["ai_label"].tolist() == ["a", "a", "b"]
    assert new["label_source"].tolist() == ["ai", "rm", "rm"] and new["initial_source"].tolist() == ["ai", "rm", "rm"]


def test_eyes_off_draws_from_the_upper_left_among_ai_labels_only():
    order = np.array([4, 0, 3, 1, 2, 5, 6, 7])  # the curve: position 4 ranks first
    ai_labelled = np.array([True, True, True, True, False, True, True, True])
    picked = eyes_off_positions(order, 3, ai_labelled, 2, seed=0)
    assert len(picked) == 2 and set(picked) <= {0, 3, 1} and list(picked) == sorted(picked)
    # fewer pairs above the elbow than asked: the head grows to `count` pairs
    assert set(eyes_off_positions(order, 1, ai_labelled, 3, seed=0)) == {0, 3, 1}


def test_flips_mark_changed_labels_and_flipping_back_restores_the_source():
    f = with_answers(frame(["a", "b", "a"]), [2], ["b"], 1)
    flipped = with_flips(f, [0, 2])
    assert flipped["label"].tolist() == ["b", "b", "a"]  # a human label is flipped only if asked: here it was
    assert flipped["label_source"].tolist() == ["flipped", "ai", "human"]
    back = with_flips(flipped, [0])
    assert back["label"].tolist() == ["a", "b", "a"] and back["label_source"].tolist() == ["ai", "ai", "human"]


def test_answers_become_human_labels_of_their_iteration():
    f = with_answers(frame(["a", "b", "a"]), np.array([0, 2]), ["b", "a"], 3)
    assert f["label"].tolist() == ["b", "b", "a"]
    assert f["label_source"].tolist() == ["human", "ai", "human"] and f["human_iteration"].tolist() == [3, -1, 3]
