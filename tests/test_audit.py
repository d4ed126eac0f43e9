"""The audit (rlthf/core/audit.py): exact examples, edge cases, errors, and unbiasedness on a synthetic corpus."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from rlthf.core.audit import AccuracyEstimate, audit_sample, corpus_accuracy, estimate_accuracy
from rlthf.core.labels import hash_unit

# --- audit_sample ----------------------------------------------------------------------------------------------


def test_audit_sample_takes_the_smallest_eligible_draws_in_index_order():
    draws = [0.5, 0.1, 0.9, 0.3, 0.2, 0.7]
    eligible = np.array([True, True, False, True, False, True])
    # eligible draws: 0 -> 0.5, 1 -> 0.1, 3 -> 0.3, 5 -> 0.7; pair 4 (0.2) is not eligible
    np.testing.assert_array_equal(audit_sample(draws, eligible, 3), [0, 1, 3])
    np.testing.assert_array_equal(audit_sample(draws, eligible, 1), [1])
    np.testing.assert_array_equal(audit_sample(draws, eligible, 4), [0, 1, 3, 5])
    assert audit_sample(draws, eligible, 0).dtype == np.int64 and len(audit_sample(draws, eligible, 0)) == 0


def test_audit_sample_breaks_ties_toward_the_lower_index():
    np.testing.assert_array_equal(audit_sample([0.2, 0.1, 0.2, 0.2], np.ones(4, bool), 2), [0, 1])
    np.testing.assert_array_equal(audit_sample([0.2, 0.1, 0.2, 0.2], np.array([False, True, False, True]), 2), [1, 3])


def test_audit_sample_with_hashed_draws_depends_on_the_ids_not_their_order():
    ids = np.array([f"pair-{i}" for i in range(200)])
    eligible = np.arange(200) % 3 != 0
    chosen = ids[audit_sample(hash_unit(7, "audit", ids), eligible, 20)]
    assert len(set(chosen)) == 20 and all(int(i.split("-")[1]) % 3 != 0 for i in chosen)
    np.testing.assert_array_equal(ids[audit_sample(hash_unit(7, "audit", ids), eligible, 20)], chosen)
    order = np.random.default_rng(0).permutation(200)
    shuffled = ids[order][audit_sample(hash_unit(7, "audit", ids[order]), eligible[order], 20)]
    assert set(shuffled) == set(chosen)
    assert set(ids[audit_sample(hash_unit(8, "audit", ids), eligible, 20)]) != set(chosen)


@pytest.mark.parametrize("draws, eligible, size, argument", [
    ([0.1, 0.2], [True, True], 3, "size"),
    ([0.1, 0.2], [True, False], 2, "size"),
    ([0.1, 0.2], [True, True], -1, "size"),
    ([0.1, 0.2], [True, True], 1.0, "size"),
    ([0.1, 0.2], [True, True], True, "size"),
    ([0.1, 0.2], [True], 1, "eligible"),
    ([0.1, 0.2], [1, 1], 1, "eligible"),
    ([0.1, float("nan")], [True, True], 1, "draws"),
    ([[0.1, 0.2]], [[True, True]], 1, "draws"),
])
def test_audit_sample_errors_name_the_argument(draws, eligible, size, argument):
    with pytest.raises(ValueError, match=f"^{argument} "):
        audit_sample(draws, np.array(eligible), size)


# --- corpus_accuracy -------------------------------------------------------------------------------------------


def test_corpus_accuracy_maps_the_wilson_interval_of_the_audit():
    estimate = corpus_accuracy(known_correct=40, known_pairs=50, audit_correct=15, audit_pairs=20,
                               unaudited_pairs=150)
    assert isinstance(estimate, AccuracyEstimate)
    # p_hat = 15/20 = 0.75 at the effective size 20 * 150 / 170 = 17.647 (the 150 pairs' accuracy is a draw too);
    # its Wilson 95% interval [0.5168458, 0.8937675]; value = (40 + 150 * p) / 200
    assert estimate.value == pytest.approx(0.7625, abs=1e-12)
    assert estimate.low == pytest.approx((40 + 150 * 0.5168458) / 200, abs=1e-7)
    assert estimate.high == pytest.approx((40 + 150 * 0.8937675) / 200, abs=1e-7)
    assert (estimate.pairs, estimate.known_pairs, estimate.audit_pairs, estimate.unaudited_pairs) == (200, 50, 20, 150)
    wider = corpus_accuracy(known_correct=40, known_pairs=50, audit_correct=15, audit_pairs=20,
                            unaudited_pairs=150, z=2.576)
    assert wider.value == estimate.value and wider.low < estimate.low and wider.high > estimate.high


def test_corpus_accuracy_takes_the_wider_of_wilson_and_the_bootstraps_errors():
    counts = dict(known_correct=40, known_pairs=50, audit_correct=15, audit_pairs=20, unaudited_pairs=150)
    wilson = corpus_accuracy(**counts)
    # errors of the estimate from -0.25 to +0.05: at 95% (quantiles 2.5% and 97.5%, Phi(-1.96) and Phi(1.96) to
    # 1e-5) the share lies in [0.75 - 0.0425, 0.75 + 0.2425]: the bootstrap widens the top only (Wilson's top
    # 0.8937675 < 0.9925)
    errors = np.linspace(-0.25, 0.05, 3001)
    widened = corpus_accuracy(**counts, share_errors=errors)
    assert widened.value == wilson.value and widened.low == wilson.low
    assert widened.high == pytest.approx((40 + 150 * (0.75 + 0.2425)) / 200, abs=1e-5)
    assert widened.bootstrap_draws == 3001 and wilson.bootstrap_draws == 0
    # never past all right, and errors inside Wilson's interval leave it as it is
    assert corpus_accuracy(**counts, share_errors=[-0.9, 0.0]).high == (40 + 150) / 200  # the 150 all right
    assert corpus_accuracy(**counts, share_errors=np.zeros(10)) == dataclasses.replace(wilson, bootstrap_draws=10)
    with pytest.raises(ValueError, match="share_errors"):
        corpus_accuracy(**counts, share_errors=[0.1, np.nan])


def test_corpus_accuracy_without_audit_spans_all_wrong_to_all_right():
    estimate = corpus_accuracy(known_correct=30, known_pairs=40, audit_correct=0, audit_pairs=0, unaudited_pairs=60)
    assert math.isnan(estimate.value)
    assert (estimate.low, estimate.high) == (pytest.approx(0.3), pytest.approx(0.9))
    assert estimate.summary()["value"] is None


def test_corpus_accuracy_is_exact_when_every_pair_is_known():
    estimate = corpus_accuracy(known_correct=45, known_pairs=60, audit_correct=5, audit_pairs=10, unaudited_pairs=0)
    assert estimate.value == estimate.low == estimate.high == 0.75
    only_unaudited = corpus_accuracy(known_correct=3, known_pairs=4, audit_correct=3, audit_pairs=4,
                                     unaudited_pairs=996)
    assert only_unaudited.value == pytest.approx(0.75)


def test_accuracy_estimate_summary_is_json_and_str_is_one_line():
    estimate = corpus_accuracy(known_correct=40, known_pairs=50, audit_correct=15, audit_pairs=20,
                               unaudited_pairs=150)
    assert json.loads(json.dumps(estimate.summary())) == estimate.summary()
    assert set(estimate.summary()) == {"value", "low", "high", "pairs", "known_pairs", "known_correct",
                                       "audit_pairs", "audit_correct", "unaudited_pairs", "z", "bootstrap_draws"}
    assert str(estimate).startswith("0.762 [0.588, 0.870] over 200 pairs")
    with pytest.raises(AttributeError):
        estimate.value = 1.0


@pytest.mark.parametrize("counts, argument", [
    (dict(known_correct=51), "known_correct"),
    (dict(audit_correct=21), "audit_correct"),
    (dict(audit_pairs=51, audit_correct=0), "audit_pairs"),
    (dict(unaudited_pairs=-1), "unaudited_pairs"),
    (dict(known_pairs=2.5), "known_pairs"),
    (dict(known_correct=0, known_pairs=0, audit_correct=0, audit_pairs=0, unaudited_pairs=0), "known_pairs"),
    (dict(z=0.0), "z"),
])
def test_corpus_accuracy_errors_name_the_count(counts, argument):
    given = dict(known_correct=40, known_pairs=50, audit_correct=15, audit_pairs=20, unaudited_pairs=150)
    with pytest.raises(ValueError, match=f"^{argument} "):
        corpus_accuracy(**{**given, **counts})


def test_corpus_accuracy_takes_keywords_only():
    with pytest.raises(TypeError):
        corpus_accuracy(40, 50, 15, 20, 150)


# --- estimate_accuracy -----------------------------------------------------------------------------------------

LABELS = np.array(["a", "a", "b", "b", "a", "b", "a", None, "a", "b"], dtype=object)
HUMAN = np.array(["a", "b", "b", None, "a", None, None, None, "b", "a"], dtype=object)
AUDITED = [4, 8, 9]


def test_estimate_accuracy_counts_known_pairs_and_the_audit():
    estimate = estimate_accuracy(LABELS, HUMAN, AUDITED)
    # known: 0 right, 1 wrong, 2 right, 4 right, 8 wrong, 9 wrong; audit 1/3 right; 4 pairs unaudited
    assert (estimate.known_correct, estimate.known_pairs, estimate.audit_correct, estimate.audit_pairs,
            estimate.unaudited_pairs) == (3, 6, 1, 3, 4)
    assert estimate.value == pytest.approx((3 + 4 / 3) / 10)
    mask = np.zeros(10, bool)
    mask[AUDITED] = True
    assert estimate_accuracy(LABELS, HUMAN, mask) == estimate


def test_estimate_accuracy_of_a_curated_set_reads_the_audit_labels_on_the_audit():
    curated = np.where(HUMAN != None, HUMAN, LABELS)  # noqa: E711 (elementwise)
    rule_without_human = np.full(10, None, dtype=object)
    rule_without_human[AUDITED] = ["b", "b", "a"]  # against the human labels a, b, a: wrong, right, right
    estimate = estimate_accuracy(curated, HUMAN, AUDITED, audit_labels=rule_without_human)
    assert (estimate.known_correct, estimate.audit_correct) == (6, 2)
    assert estimate.value == pytest.approx((6 + 4 * 2 / 3) / 10)


def test_estimate_accuracy_of_the_rm_on_the_pairs_it_would_label():
    rm = np.array(["a", "b", "a", "a", "a", "b", "b", "b", "b", "b"], dtype=object)
    pool = np.array([HUMAN[i] is None or i in AUDITED for i in range(10)])  # no human label before the audit
    audited_in_pool = np.isin(np.flatnonzero(pool), AUDITED)
    estimate = estimate_accuracy(rm[pool], HUMAN[pool], audited_in_pool)
    # the audit (4: right, 8: right, 9: wrong) is all that is known: the estimate is its proportion
    assert (estimate.pairs, estimate.known_pairs, estimate.audit_correct) == (7, 3, 2)
    assert estimate.value == pytest.approx(2 / 3)


@pytest.mark.parametrize("labels, human, audited, argument", [
    (LABELS, HUMAN[:9], AUDITED, "human_label"),
    (np.where(np.arange(10) == 2, "c", LABELS).astype(object), HUMAN, AUDITED, "labels"),
    (LABELS, np.where(np.arange(10) == 0, "A", HUMAN).astype(object), AUDITED, "human_label"),
    (LABELS, HUMAN, [3, 4], "audited"),
    (LABELS, HUMAN, [4, 10], "audited"),
    (LABELS, HUMAN, np.ones(9, bool), "audited"),
])
def test_estimate_accuracy_errors_name_the_argument(labels, human, audited, argument):
    with pytest.raises(ValueError, match=f"^{argument}"):
        estimate_accuracy(labels, human, audited)


def test_estimate_accuracy_takes_nan_as_no_label():
    assert estimate_accuracy(LABELS, np.where(HUMAN == None, np.nan, HUMAN), AUDITED) == \
        estimate_accuracy(LABELS, HUMAN, AUDITED)  # noqa: E711


# --- unbiasedness on a synthetic corpus ------------------------------------------------------------------------


def test_audit_estimates_are_unbiased_and_their_intervals_cover():
    """20,000 pairs, AI labels right 75% of the time, 500 targeted human labels where the AI is mostly wrong;
    400 audits of 300 pairs with different seeds."""
    rng = np.random.default_rng(2025)
    size, audit = 20_000, 300
    ai_right = rng.random(size) < 0.75
    rm_right = rng.random(size) < 0.62
    targeted = rng.choice(np.flatnonzero(~ai_right), 400, replace=False)
    targeted = np.union1d(targeted, rng.choice(np.flatnonzero(ai_right), 100, replace=False))
    had_human = np.zeros(size, bool)
    had_human[targeted] = True
    true_ai, true_rm = ai_right.mean(), rm_right[~had_human].mean()
    ai_estimates, rm_estimates = [], []
    for seed in range(400):
        audited = np.zeros(size, bool)
        audited[audit_sample(np.random.default_rng(seed).random(size), ~had_human, audit)] = True
        known = had_human | audited
        ai_estimates.append(corpus_accuracy(
            known_correct=int(ai_right[known].sum()), known_pairs=int(known.sum()),
            audit_correct=int(ai_right[audited].sum()), audit_pairs=audit, unaudited_pairs=int((~known).sum())))
        rm_estimates.append(corpus_accuracy(  # on the pairs without a human label before the audit
            known_correct=int(rm_right[audited].sum()), known_pairs=audit, audit_correct=int(rm_right[audited].sum()),
            audit_pairs=audit, unaudited_pairs=int((~known).sum())))
    for estimates, truth in ((ai_estimates, true_ai), (rm_estimates, true_rm)):
        values = np.array([e.value for e in estimates])
        covered = np.mean([e.low <= truth <= e.high for e in estimates])
        # one estimate's standard error is about 0.025, the mean of 400 about 0.0013
        assert abs(values.mean() - truth) < 0.004
        assert covered >= 0.92
