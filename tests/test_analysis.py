"""Exact expectations for the reward-curve analysis on curves whose elbow and knee are known by construction."""
import numpy as np
import pytest

from rlthf.core.curve import analyze_curve, smooth


def three_piece_curve():
    """Descending, 200 ranks: a steep head (drops of 40) to rank 19, a flat body (drops of 3) to rank 179,
    a steep tail (drops of 40). Integers, so every comparison is exact."""
    drops = np.r_[np.full(19, 40.0), np.full(160, 3.0), np.full(20, 40.0)]
    return 1000.0 - np.r_[0.0, np.cumsum(drops)]


def test_three_piece_curve_without_smoothing_finds_the_corners():
    curve = three_piece_curve()
    assert curve[19] == 240 and curve[179] == -240 and curve[180] == -280
    a = analyze_curve(curve, smoothing=0.0)
    assert (a.elbow_index, a.knee_index, a.reflection_index) == (19, 179, 180)
    assert a.threshold == 6.0 and a.method == "derivative"
    np.testing.assert_array_equal(a.order, np.arange(200))


def test_smoothing_moves_the_landmarks_inward_by_half_a_window():
    # window = 2 * floor(0.05 * 200 / 2) + 1 = 11: a smoothed drop is flat only when its 11 drops are all body
    a = analyze_curve(three_piece_curve(), smoothing=0.05)
    assert (a.elbow_index, a.knee_index) == (24, 174)
    # elbow margin 1000 - 19*40 - 5*3 = 225; first rank below -225 is 175 = knee + 1
    assert a.elbow_margin == 225 and a.reflection_index == 175


def test_order_and_ranks_map_a_shuffled_input_back():
    curve = three_piece_curve()
    perm = np.random.default_rng(0).permutation(200)
    a = analyze_curve(curve[perm], smoothing=0.0)
    np.testing.assert_array_equal(a.sorted_margins, curve)
    np.testing.assert_array_equal(perm[a.order], np.arange(200))
    np.testing.assert_array_equal(a.order[a.ranks], np.arange(200))
    assert (a.elbow_index, a.knee_index, a.reflection_index) == (19, 179, 180)


def test_all_positive_margins_have_no_reflection():
    a = analyze_curve(three_piece_curve() + 5000, smoothing=0.0)
    assert (a.elbow_index, a.knee_index, a.reflection_index) == (19, 179, 200)


def test_reflection_never_lies_left_of_the_knee():
    # a small head (elbow margin 10) over a long negative body: -10 is crossed inside the body
    drops = np.r_[np.full(9, 40.0), np.full(170, 1.0), np.full(20, 40.0)]
    curve = 370.0 - np.r_[0.0, np.cumsum(drops)]
    a = analyze_curve(curve, smoothing=0.0)
    assert a.elbow_index == 9 and a.elbow_margin == 10 and a.knee_index == 179
    assert int(np.flatnonzero(curve < -10)[0]) == 30  # what the bare reflection would be
    assert a.reflection_index == 180


@pytest.mark.parametrize("value", [1.0, -1.0, 0.0])
def test_flat_curve_has_no_head_no_tail_and_flips_nothing(value):
    a = analyze_curve(np.full(100, value))
    assert (a.elbow_index, a.knee_index, a.reflection_index) == (0, 99, 100)


def test_elbow_margin_not_positive_flips_nothing():
    a = analyze_curve(three_piece_curve() - 2000, smoothing=0.0)
    assert a.elbow_margin < 0 and a.reflection_index == 200


def test_short_curves_use_the_sign_fallback():
    a = analyze_curve([0.0, 3.0, -5.0, 1.0, -1.0], min_points=50)
    assert a.method == "sign"
    np.testing.assert_array_equal(a.sorted_margins, [3, 1, 0, -1, -5])
    # elbow 0 (margin 3), knee = last margin >= 0 (rank 2), reflection = first below -3 (rank 4)
    assert (a.elbow_index, a.knee_index, a.reflection_index) == (0, 2, 4)
    assert analyze_curve([-1.0, -2.0], min_points=50).knee_index == 0
    assert analyze_curve([2.0]).reflection_index == 1


def test_ties_keep_input_order():
    margins = np.r_[np.full(30, 1.0), np.full(30, 1.0), np.linspace(0, -1, 40)]
    a = analyze_curve(margins)
    np.testing.assert_array_equal(a.order[:60], np.arange(60))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_margins_are_a_clear_error(bad):
    margins = np.linspace(1, -1, 60)
    margins[[7, 9]] = bad
    with pytest.raises(ValueError, match=r"position 7 .*2 non-finite"):
        analyze_curve(margins)
    with pytest.raises(ValueError, match="pair 'p7'"):
        analyze_curve(margins, ids=[f"p{i}" for i in range(60)])


def test_empty_or_2d_input_is_an_error():
    with pytest.raises(ValueError, match="non-empty 1-d"):
        analyze_curve([])
    with pytest.raises(ValueError, match="non-empty 1-d"):
        analyze_curve(np.zeros((3, 3)))


def test_smooth_is_a_centred_moving_average_with_edge_padding():
    np.testing.assert_allclose(smooth(np.array([0.0, 0, 3, 0, 0]), 3), [0, 1, 1, 1, 0])
    np.testing.assert_allclose(smooth(np.array([3.0, 0, 0]), 3), [2, 1, 0])


def test_label_noise_concentrates_past_the_reflection_point():
    # cleanlab-style: margins of correct labels ~ N(2, 1); 20% of labels flipped, which negates their margin
    rng = np.random.default_rng(0)
    true_margin = rng.normal(2.0, 1.0, 2000)
    noisy = rng.random(2000) < 0.2
    a = analyze_curve(np.where(noisy, -true_margin, true_margin))
    assert a.elbow_index < a.knee_index < a.reflection_index < 2000
    past = a.order[a.reflection_index:]
    assert noisy[past].mean() > 0.95
    head = a.order[: a.elbow_index]
    assert noisy[head].mean() < 0.01
