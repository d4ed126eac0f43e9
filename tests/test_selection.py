"""Exact expectations for one selection step on the three-piece curve (elbow 19, knee 179, reflection 180)."""
import numpy as np
import pytest

from rlthf.core.curve import analyze_curve
from rlthf.core.selection import annotation_batch_size, schedule_value, select_pairs, select_random
from tests.test_analysis import three_piece_curve

PERM = np.random.default_rng(1).permutation(200)


def shuffled_analysis():
    return analyze_curve(three_piece_curve()[PERM], smoothing=0.0)


def rank_of(positions):
    """Positions in the shuffled input -> ranks in the curve (the curve was built sorted)."""
    return PERM[np.asarray(positions)]


def test_first_iteration_flips_tail_annotates_leftward_and_backs_off_from_knee():
    a = shuffled_analysis()
    s = select_pairs(a, np.zeros(200, bool), annotation_size=8, amplification=4, backoff=0.6)
    np.testing.assert_array_equal(np.sort(rank_of(s.flip)), np.arange(180, 200))
    np.testing.assert_array_equal(rank_of(s.annotate), np.arange(179, 171, -1))
    assert s.train_cutoff_rank == 71  # floor(0.4 * 179)
    ranks, counts = np.unique(rank_of(s.train), return_counts=True)
    np.testing.assert_array_equal(ranks, np.r_[np.arange(71), np.arange(172, 180)])
    np.testing.assert_array_equal(counts, np.r_[np.ones(71), np.full(8, 4)])
    assert s.summary() == {"flipped": 20, "annotated": 8, "train_rows": 103, "train_cutoff_rank": 71,
                           "repeats": 4}


def test_human_labelled_pairs_are_never_flipped_nor_asked_again_and_always_trained():
    a = shuffled_analysis()
    human_ranks = np.array([3, 100, 178, 176, 185])
    human = np.zeros(200, bool)
    human[a.order[human_ranks]] = True
    s = select_pairs(a, human, annotation_size=4, amplification=2, backoff=0.0)
    assert 185 not in rank_of(s.flip) and len(s.flip) == 19
    np.testing.assert_array_equal(rank_of(s.annotate), [179, 177, 175, 174])
    ranks, counts = np.unique(rank_of(s.train), return_counts=True)
    humans_now = {3, 100, 178, 176, 185, 179, 177, 175, 174}
    assert all(counts[ranks == r][0] == 2 for r in humans_now)
    # beta = 0: every non-human pair left of the knee (179) trains once
    assert set(ranks[counts == 1]) == set(range(179)) - humans_now


def test_a_batch_larger_than_the_left_stretch_takes_the_flipped_tail_last():
    a = analyze_curve(three_piece_curve(), smoothing=0.0)
    human = np.ones(200, bool)
    human[[5, 6, 190, 195]] = False
    s = select_pairs(a, human, annotation_size=3, amplification=1, backoff=0.5)
    np.testing.assert_array_equal(s.annotate, [6, 5, 190])
    np.testing.assert_array_equal(s.flip, [190, 195])  # the flip is applied first; the human answer overrides it


def test_no_flip_ablation_and_zero_batch():
    a = shuffled_analysis()
    s = select_pairs(a, np.zeros(200, bool), annotation_size=0, amplification=4, backoff=0.6, flip=False)
    assert len(s.flip) == 0 and len(s.annotate) == 0 and len(s.train) == 71


def test_fractional_amplification_rounds_and_never_drops_humans():
    a = shuffled_analysis()
    human = np.zeros(200, bool)
    human[0] = True
    assert select_pairs(a, human, annotation_size=0, amplification=2.6, backoff=0.5).repeats == 3
    assert select_pairs(a, human, annotation_size=0, amplification=1.0, backoff=0.5).repeats == 1


def test_bad_arguments_are_errors():
    a = shuffled_analysis()
    with pytest.raises(ValueError, match="shape"):
        select_pairs(a, np.zeros(5, bool), annotation_size=1, amplification=1, backoff=0.5)
    with pytest.raises(ValueError, match="backoff"):
        select_pairs(a, np.zeros(200, bool), annotation_size=1, amplification=1, backoff=1.0)


def test_schedules_follow_the_paper_and_repeat_their_last_value():
    beta = [0.6, 0.6, 0.6, 0.4, 0.2, 0.1]
    assert [schedule_value(beta, k) for k in range(1, 9)] == [0.6, 0.6, 0.6, 0.4, 0.2, 0.1, 0.1, 0.1]
    assert schedule_value([4.0], 7) == 4.0
    with pytest.raises(ValueError, match="iteration 1"):
        schedule_value(beta, 0)


def test_annotation_batch_size_is_a_rounded_fraction_of_the_shard():
    assert annotation_batch_size(462, 0.04) == 18
    assert annotation_batch_size(462, 0.0) == 0


def test_random_baseline_draws_unlabelled_pairs_and_trains_on_everything_once():
    human = np.zeros(200, bool)
    human[:150] = True
    s = select_random(200, human, annotation_size=8, seed=3)
    assert len(s.annotate) == 8 and len(set(s.annotate)) == 8 and (s.annotate >= 150).all()
    np.testing.assert_array_equal(s.annotate, select_random(200, human, annotation_size=8, seed=3).annotate)
    assert not np.array_equal(s.annotate, select_random(200, human, annotation_size=8, seed=4).annotate)
    np.testing.assert_array_equal(s.train, np.arange(200))
    assert len(s.flip) == 0 and s.repeats == 1
    assert len(select_random(200, human, annotation_size=80, seed=0).annotate) == 50  # only 50 unlabelled


def test_pairs_not_trainable_stay_out_of_training_unless_a_human_labels_them():
    a = shuffled_analysis()
    trainable = np.ones(200, bool)
    trainable[a.order[[0, 50, 175]]] = False  # ranks 0 and 50 under the cutoff, 175 in this batch
    s = select_pairs(a, np.zeros(200, bool), annotation_size=8, amplification=4, backoff=0.6, trainable=trainable)
    ranks, counts = np.unique(rank_of(s.train), return_counts=True)
    np.testing.assert_array_equal(ranks, np.r_[np.arange(1, 50), np.arange(51, 71), np.arange(172, 180)])
    np.testing.assert_array_equal(counts, np.r_[np.ones(69), np.full(8, 4)])
    with pytest.raises(ValueError, match="trainable has shape"):
        select_pairs(a, np.zeros(200, bool), annotation_size=8, amplification=4, backoff=0.6,
                     trainable=np.ones(3, bool))


def test_random_trains_every_trainable_pair_and_every_human_one():
    human = np.array([True, False, False, True, True, True])
    trainable = np.array([False, False, False, True, True, True])
    s = select_random(6, human, annotation_size=1, seed=0, trainable=trainable)
    (asked,) = s.annotate
    assert asked in (1, 2)
    np.testing.assert_array_equal(s.train, sorted({0, int(asked), 3, 4, 5}))  # the pair not asked stays out
