"""Simulated labelers and the reward-head noise finders, on synthetic data with known, injected noise.

The simulated AI labeler must make exactly the requested number of mistakes, on hard pairs when asked to. The
out-of-fold margins (behind ``hardness_scores``) and ``paper_flipped_truth`` are checked the cleanlab way: flip
known labels of synthetic pairs whose true preference is a linear function of the embeddings, and measure what
each method finds.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

from rlthf.config import RewardConfig
from rlthf.core.labels import flip_labels, label_sign
from rlthf.core.simulate import error_probabilities, simulate_ai_labels
from rlthf.reward.heads import hardness_scores, out_of_fold_margins, paper_flipped_truth


def alternating_truth(n: int) -> np.ndarray:
    return np.array(["a", "b"] * (n // 2) + ["a"] * (n % 2), dtype=object)


# flip_labels, label_sign

def test_flip_labels():
    flipped = flip_labels(np.array(["a", "b", "a"], dtype=object))
    assert flipped.tolist() == ["b", "a", "b"] and flipped.dtype == object
    assert flip_labels(flipped).tolist() == ["a", "b", "a"]


def test_label_sign():
    assert label_sign(["a", "b", "b"]).tolist() == [1.0, -1.0, -1.0]


# simulate_ai_labels: exact error counts, seeds

@pytest.mark.parametrize("noise", ["uniform", "hardness"])
@pytest.mark.parametrize("n, accuracy, errors", [
    (1000, 0.75, 250), (7, 0.75, 2), (10, 0.75, 2), (100, 0.747, 25), (50, 1.0, 0), (50, 0.5, 25), (3, 0.9, 0)])
def test_exact_number_of_errors(noise, n, accuracy, errors):
    truth = alternating_truth(n)
    hardness = np.random.default_rng(1).normal(size=n) if noise == "hardness" else None
    labels = simulate_ai_labels(truth, target_accuracy=accuracy, seed=3, hardness=hardness, noise=noise)
    assert labels.dtype == object and set(labels) <= {"a", "b"}
    assert int((labels != truth).sum()) == errors


@pytest.mark.parametrize("noise", ["uniform", "hardness"])
def test_deterministic_per_seed_and_different_across_seeds(noise):
    n = 400
    truth = alternating_truth(n)
    hardness = np.linspace(-1, 1, n) if noise == "hardness" else None
    draw = lambda seed: simulate_ai_labels(truth, target_accuracy=0.8, seed=seed, hardness=hardness,  # noqa: E731
                                           noise=noise)
    assert np.array_equal(draw(7), draw(7))
    wrong = [set(np.flatnonzero(draw(seed) != truth)) for seed in range(3)]
    assert len(wrong[0]) == len(wrong[1]) == len(wrong[2]) == 80
    assert wrong[0] != wrong[1] and wrong[1] != wrong[2] and wrong[0] != wrong[2]


def test_input_truth_is_not_modified():
    truth = alternating_truth(100)
    before = truth.copy()
    simulate_ai_labels(truth, target_accuracy=0.5, seed=0, noise="uniform")
    assert np.array_equal(truth, before)


def mean_error_rank(sharpness: float, seeds=range(5), n: int = 1000) -> float:
    """Mean hardness rank of the mistakes, hardness = 0 .. n-1 (uniform placement: (n - 1) / 2)."""
    truth = alternating_truth(n)
    ranks = [np.flatnonzero(simulate_ai_labels(truth, target_accuracy=0.75, seed=seed, hardness=np.arange(n),
                                               sharpness=sharpness) != truth).mean() for seed in seeds]
    return float(np.mean(ranks))


def test_hardness_noise_concentrates_on_hard_pairs():
    # 250 errors out of 1000: all on the hardest quarter would give a mean rank of 874.5, uniform 499.5.
    assert mean_error_rank(20.0) > 850
    n, truth = 1000, alternating_truth(1000)
    errors = np.flatnonzero(simulate_ai_labels(truth, target_accuracy=0.75, seed=0, hardness=np.arange(n),
                                               sharpness=20.0) != truth)
    assert errors.min() >= 500  # none on the easier half


def test_sharpness_zero_is_uniform():
    assert abs(mean_error_rank(0.0) - 499.5) < 30  # 5 seeds: the standard error is about 7


def test_concentration_rises_with_sharpness():
    ranks = [mean_error_rank(s) for s in (0.0, 1.0, 2.0, 5.0, 20.0)]
    assert ranks == sorted(ranks) and ranks[2] > 700


def test_hardness_order_not_position_matters():
    # The same hardness scores, shuffled: the mistakes follow the scores, not the row order.
    n = 1000
    truth = alternating_truth(n)
    hardness = np.random.default_rng(0).permutation(n)
    errors = simulate_ai_labels(truth, target_accuracy=0.75, seed=0, hardness=hardness, sharpness=20.0) != truth
    assert hardness[errors].mean() > 850


def test_bad_noise_or_hardness():
    truth = alternating_truth(10)
    with pytest.raises(ValueError, match="noise must be 'hardness' or 'uniform', got 'gaussian'"):
        simulate_ai_labels(truth, target_accuracy=0.8, seed=0, noise="gaussian")
    with pytest.raises(ValueError, match="one hardness score per pair"):
        simulate_ai_labels(truth, target_accuracy=0.8, seed=0, noise="hardness")
    with pytest.raises(ValueError, match="one hardness score per pair"):
        simulate_ai_labels(truth, target_accuracy=0.8, seed=0, hardness=np.zeros(9))


# error_probabilities

@pytest.mark.parametrize("rate", [0.01, 0.05, 0.25, 0.4])
@pytest.mark.parametrize("sharpness", [0.0, 1.0, 2.0, 5.0, 20.0])
def test_error_probabilities_mean_is_the_rate(rate, sharpness):
    hardness = np.random.default_rng(0).normal(size=500) ** 3  # skewed, with outliers
    p = error_probabilities(hardness, rate, sharpness)
    assert p.shape == (500,) and p.mean() == pytest.approx(rate, abs=1e-6)
    assert ((p >= 0) & (p <= 1)).all()


@pytest.mark.parametrize("sharpness", [0.5, 2.0, 10.0])
def test_error_probabilities_monotone_in_hardness(sharpness):
    hardness = np.random.default_rng(1).normal(size=300)
    p = error_probabilities(hardness, 0.25, sharpness)
    order = np.argsort(hardness)
    assert (np.diff(p[order]) > 0).all()
    # The probability depends on the hardness only through its standardised value.
    assert error_probabilities(3 * hardness + 7, 0.25, sharpness) == pytest.approx(p, abs=1e-9)


def test_error_probabilities_constant_hardness_or_no_sharpness():
    p = error_probabilities(np.full(50, 2.5), 0.3, 4.0)
    assert p == pytest.approx(np.full(50, 0.3), abs=1e-6)
    q = error_probabilities(np.arange(50), 0.3, 0.0)
    assert q == pytest.approx(np.full(50, 0.3), abs=1e-6)


def test_error_probabilities_zero_rate():
    assert error_probabilities(np.arange(10), 0.0, 2.0).tolist() == [0.0] * 10


def test_error_probabilities_mean_with_large_sharpness():
    assert error_probabilities(np.arange(1000), 0.25, 100.0).mean() == pytest.approx(0.25, abs=1e-6)


# Out-of-fold margins and paper_flipped_truth on synthetic embeddings with injected noise

N, DIM, NOISE, GAP = 600, 16, 0.10, 1.0
CONFIG = RewardConfig(epochs=50, learning_rate=0.05, batch_size=64)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny heads train several times faster on one thread than on two when the cores are busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic_pairs(seed: int):
    """Pairs whose true preference is ``w . (a - b) > 0``, kept only where ``|u . (a - b)| >= GAP`` (u = w/|w|):
    every pair has a clear preference, so a good head can get every clean label right. Then 10% of the labels
    are flipped. Returns emb_a, emb_b, clean truth, noisy labels and the mask of injected flips."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=DIM)
    a, b = rng.normal(size=(4 * N, DIM)), rng.normal(size=(4 * N, DIM))
    keep = np.flatnonzero(np.abs((a - b) @ (w / np.linalg.norm(w))) >= GAP)[:N]
    assert len(keep) == N
    a, b = a[keep], b[keep]
    truth = np.where((a - b) @ w > 0, "a", "b").astype(object)
    injected = np.zeros(N, bool)
    injected[rng.choice(N, int(NOISE * N), replace=False)] = True
    noisy = np.where(injected, flip_labels(truth), truth).astype(object)
    return a, b, truth, noisy, injected


@functools.lru_cache(maxsize=None)
def out_of_fold_on(seed: int) -> np.ndarray:
    """Out-of-fold margins of the noisy labels of ``synthetic_pairs(seed)`` (computed once per seed)."""
    a, b, _, noisy, _ = synthetic_pairs(seed)
    return out_of_fold_margins(a, b, noisy, folds=5, config=CONFIG, seed=seed)


def suspected(method: str, seed: int) -> np.ndarray:
    """The labels a method calls wrong."""
    if method == "out_of_fold":
        return out_of_fold_on(seed) < 0
    a, b, _, noisy, _ = synthetic_pairs(seed)
    _, flipped = paper_flipped_truth(a, b, noisy, config=CONFIG, seed=seed)
    return flipped


@pytest.mark.parametrize("method, seed", [("out_of_fold", 0), ("paper_flipped", 0), ("paper_flipped", 1)])
def test_injected_noise_is_found(method, seed):
    _, _, truth, noisy, injected = synthetic_pairs(seed)
    wrong = suspected(method, seed)
    recovered = np.where(wrong, flip_labels(noisy), noisy)
    assert (noisy == truth).mean() == 0.90
    assert (recovered == truth).mean() >= 0.95  # the truth comes back
    assert injected[wrong].mean() >= 0.80  # what is flipped back is mostly injected noise
    assert wrong[injected].mean() >= 0.85  # and most of the injected noise is flipped back


def test_out_of_fold_margins_rank_injected_noise_hardest():
    *_, injected = synthetic_pairs(0)
    hardness = -out_of_fold_on(0)
    hardest = np.argsort(-hardness)[:injected.sum()]
    assert injected[hardest].mean() >= 0.85


def test_hardness_scores_are_minus_out_of_fold_margins():
    a, b, truth, *_ = synthetic_pairs(4)
    a, b, truth = a[:120], b[:120], truth[:120]
    config = RewardConfig(epochs=5, learning_rate=0.05, batch_size=64)
    margins = out_of_fold_margins(a, b, truth, folds=3, config=config, seed=4)
    assert np.array_equal(hardness_scores(a, b, truth, folds=3, config=config, seed=4), -margins)
    assert (margins > 0).mean() >= 0.8  # even 5 epochs on 80 clean pairs mostly agree with the truth


def test_paper_flipped_truth_returns_flipped_labels():
    a, b, truth, noisy, injected = synthetic_pairs(2)
    new, flipped = paper_flipped_truth(a, b, noisy, config=CONFIG, seed=2)
    assert new.dtype == object and flipped.dtype == bool
    assert np.array_equal(new == noisy, ~flipped)
    assert (new == truth).mean() >= 0.95
    # On clean labels the head agrees with (nearly) all of them: next to nothing to flip.
    _, none = paper_flipped_truth(a, b, truth, config=CONFIG, seed=2)
    assert none.sum() <= 0.01 * N
