"""The other selectors (uncertainty, QBC, confident learning), Kneedle inside RLTHF, and decayed schedules:
exact expectations on small synthetic data, with known label noise injected."""
import numpy as np
import pytest

from rlthf.core.curve import analyze_curve
from rlthf.config import ConfigError, RewardConfig, load_config
from rlthf.core.selection import decayed_schedule, select_pairs
from rlthf.core.selectors import oracle_order, rlthf_order, suspicious_first
from rlthf.core.selectors import committee_disagreement, committee_order, confident_learning_order, uncertainty_order
from tests.test_analysis import three_piece_curve

N = 200
WRONG = np.arange(5, N, 20)  # 10 labels flipped on purpose


def noisy_pairs(seed: int = 0):
    """True margins r(a) - r(b) of magnitude 0.5..3, their labels, and the labels with WRONG flipped."""
    rng = np.random.default_rng(seed)
    margin_a = np.where(rng.random(N) < 0.5, 1.0, -1.0) * rng.uniform(0.5, 3.0, N)
    truth = np.where(margin_a > 0, "a", "b")
    labels = truth.copy()
    labels[WRONG] = np.where(truth[WRONG] == "a", "b", "a")
    return margin_a, truth, labels


def test_uncertainty_ranks_by_smallest_absolute_margin_ties_by_position():
    np.testing.assert_array_equal(uncertainty_order([3.0, -0.5, 0.1, -2.0, 0.5]), [2, 1, 4, 3, 0])
    with pytest.raises(ValueError, match=r"margins\[1\] is nan"):
        uncertainty_order([1.0, np.nan])


def test_committee_ranks_by_disagreement_then_by_smallest_mean_margin():
    committee = np.array([[1.0, 2.0, -1.0, 0.5, 3.0],
                          [1.0, -2.0, -1.0, -0.1, -3.0],
                          [1.0, 1.0, -1.0, 0.2, 3.0],
                          [1.0, -1.0, -1.0, -0.3, 3.0]])
    np.testing.assert_array_equal(committee_disagreement(committee), [0.0, 0.5, 0.0, 0.5, 0.25])
    # pairs 1 and 3 split 2:2; pair 3's mean margin (0.075) is closer to 0 than pair 1's (0.0) -> pair 1 first
    np.testing.assert_array_equal(committee_order(committee), [1, 3, 4, 0, 2])
    with pytest.raises(ValueError, match="members >= 2"):
        committee_order(committee[:1])


def test_confident_learning_finds_exactly_the_injected_label_errors_first():
    margin_a, _, labels = noisy_pairs()
    prob_a = 1 / (1 + np.exp(-margin_a))  # a calibrated out-of-fold model that knows the truth
    order = confident_learning_order(labels, prob_a)
    assert sorted(order[:len(WRONG)]) == sorted(WRONG)
    np.testing.assert_array_equal(np.sort(order), np.arange(N))  # every pair, once
    with pytest.raises(ValueError, match="'c'"):
        confident_learning_order(np.where(labels == "a", "c", labels), prob_a)


@pytest.mark.parametrize("selector", ["uncertainty", "qbc", "confident_learning"])
def test_each_selector_puts_the_injected_errors_in_a_batch_on_a_separable_shard(selector):
    """Margins under the (noisy) labels from a model trained on them: the errors are the pairs it is least sure of
    (uncertainty), splits on (QBC) or contradicts out of fold (confident learning)."""
    margin_a, truth, labels = noisy_pairs()
    sign = np.where(labels == "a", 1.0, -1.0)
    # a model that learnt the noisy labels a little: the wrong pairs keep small margins either way
    fitted = margin_a.copy()
    fitted[WRONG] = 0.05 * sign[WRONG] * np.linspace(1, 2, len(WRONG))
    if selector == "uncertainty":
        order = uncertainty_order(fitted)
    elif selector == "qbc":
        shifts = np.array([-0.15, -0.05, 0.05, 0.15])[:, None]  # members disagree only where |margin| is small
        order = committee_order(fitted[None, :] + shifts)
    else:
        order = confident_learning_order(labels, 1 / (1 + np.exp(-margin_a)))
    assert set(order[:len(WRONG)]) == set(WRONG)


def test_select_pairs_with_another_order_keeps_rlthfs_flips_and_training_set():
    """Only the batch changes: the first unlabelled pairs of the order; flips and the training set as RLTHF's."""
    a = analyze_curve(three_piece_curve(), smoothing=0.0)  # elbow 19, knee 179, reflection 180; positions = ranks
    human = np.zeros(200, bool)
    human[[0, 1]] = True
    rlthf = select_pairs(a, human, annotation_size=4, amplification=4, backoff=0.6)
    order = np.r_[0, 1, 2, 3, 190, 50, np.arange(4, 50), np.arange(51, 190), np.arange(191, 200)]
    other = select_pairs(a, human, annotation_size=4, amplification=4, backoff=0.6, annotation_order=order)
    np.testing.assert_array_equal(other.annotate, [2, 3, 190, 50])
    np.testing.assert_array_equal(other.flip, rlthf.flip)  # 180..199; pair 190's human answer overrides its flip
    np.testing.assert_array_equal(other.flip, np.arange(180, 200))
    assert other.train_cutoff_rank == rlthf.train_cutoff_rank == 71
    ranks, counts = np.unique(other.train, return_counts=True)
    np.testing.assert_array_equal(ranks[counts == 4], [0, 1, 2, 3, 50, 190])
    np.testing.assert_array_equal(ranks[counts == 1], np.setdiff1d(np.arange(71), [0, 1, 2, 3, 50]))
    with pytest.raises(ValueError, match="permutation"):
        select_pairs(a, human, annotation_size=4, amplification=4, backoff=0.6, annotation_order=[0, 0, 1])


def test_kneedle_finds_the_corners_of_the_three_piece_curve():
    for smoothing in (0.0, 0.05):
        a = analyze_curve(three_piece_curve(), smoothing=smoothing, knee_detector="kneedle")
        assert (a.elbow_index, a.knee_index, a.reflection_index, a.method) == (19, 179, 180, "kneedle")
    flat = analyze_curve(np.ones(100), knee_detector="kneedle")
    assert (flat.elbow_index, flat.knee_index, flat.reflection_index) == (0, 99, 100)
    with pytest.raises(ValueError, match="knee_detector"):
        analyze_curve(three_piece_curve(), knee_detector="elbow")


def test_decayed_schedule():
    assert decayed_schedule(0.8, 0.5, 0.1, 5) == [0.8, 0.4, 0.2, 0.1, 0.1]
    assert decayed_schedule(4.0, 1.0, 1.0, 3) == [4.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="decay"):
        decayed_schedule(4.0, 0.0, 1.0, 3)


def test_selector_options_are_validated_with_their_dotted_names():
    assert load_config(None, ["selection.selector=qbc", "selection.knee_detector=kneedle"]).selection.committee_size == 5
    with pytest.raises(ConfigError, match=r"^selection.selector: expected one of"):
        load_config(None, ["selection.selector=margin"])
    with pytest.raises(ConfigError, match=r"^selection.committee_size: must be >= 2"):
        load_config(None, ["selection.committee_size=1"])
    with pytest.raises(ConfigError, match=r"^selection.knee_detector"):
        load_config(None, ["selection.knee_detector=elbow"])


def test_fold_heads_give_a_committee_and_out_of_fold_margins_that_find_the_errors():
    """Real reward heads (torch) on separable 8-d embeddings with 10 flipped labels."""
    from rlthf.reward.heads import fold_heads
    from rlthf.reward.heads import fold_of

    rng = np.random.default_rng(0)
    w = rng.normal(size=8)
    emb_a, emb_b = rng.normal(size=(N, 8)), rng.normal(size=(N, 8))
    truth = np.where((emb_a - emb_b) @ w > 0, "a", "b")
    labels = truth.copy()
    labels[WRONG] = np.where(truth[WRONG] == "a", "b", "a")
    config = RewardConfig(epochs=40, learning_rate=0.05, batch_size=32)
    committee, oof = fold_heads(emb_a, emb_b, labels, folds=4, config=config, seed=0)
    assert committee.shape == (4, N)
    np.testing.assert_array_equal(oof, committee[fold_of(N, 4, 0), np.arange(N)])
    assert np.mean((oof > 0) == (truth == "a")) > 0.9  # the heads learn the truth despite the noise
    order = confident_learning_order(labels, 1 / (1 + np.exp(-oof)))
    assert len(set(order[:len(WRONG)]) & set(WRONG)) == 9  # 9 of the 10 errors in cleanlab's first 10


# the judge's doubt inside RLTHF's region, and the oracle

def test_rlthf_order_goes_left_from_the_reflection_point_then_the_tail():
    order = np.array([3, 0, 4, 1, 2])  # the curve's sort order: position 3 ranks first
    assert rlthf_order(order, 3).tolist() == [4, 0, 3, 1, 2]


def test_suspicious_pairs_go_first_only_inside_the_window():
    priority = np.array([4, 0, 3, 1, 2])
    suspicious = np.array([False, True, False, True, False])  # by position: 1 and 3
    assert suspicious_first(priority, suspicious, 3).tolist() == [3, 4, 0, 1, 2]  # 1 is outside the window
    assert suspicious_first(priority, suspicious, 0).tolist() == priority.tolist()
    with pytest.raises(ValueError, match="suspicious has shape"):
        suspicious_first(priority, suspicious[:3], 2)


def test_the_oracle_asks_the_wrong_labels_first_in_seeded_order():
    labels = np.array(["a", "b", "a", "a", "b"], dtype=object)
    truth = np.array(["b", "b", "a", "b", "a"], dtype=object)
    order = oracle_order(labels, truth, np.array([0.9, 0.1, 0.5, 0.2, 0.3]))
    assert order.tolist() == [3, 4, 0, 1, 2]
