"""Group-aware splits, property-based: whatever the ids, groups, fractions and seed, no group is cut by the test
split or by the shard, the splits are deterministic and independent of row order, and on large inputs the
fractions hold (the test split as a chance per group, the shard as a share of pairs)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlthf.config import DataConfig
from rlthf.data import choose_shard, split_and_shard, split_test

seeds = st.integers(min_value=0, max_value=2**32)
test_fractions = st.floats(min_value=0.01, max_value=0.99)
shard_fractions = st.floats(min_value=0.01, max_value=1.0)
# Group keys of one kind per example: small integers (question ids) or short texts (prompts), with repeats.
group_lists = st.one_of(st.lists(st.integers(min_value=-3, max_value=40), min_size=1, max_size=150),
                        st.lists(st.text(max_size=3), min_size=1, max_size=150))


def frame_of(groups: list) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"pair{i}" for i in range(len(groups))], "group": pd.Series(groups, dtype=object)})


def sides(pairs: pd.DataFrame, test_fraction: float, shard_fraction: float, seed: int):
    data = DataConfig(group_column="group", test_fraction=test_fraction, shard_fraction=shard_fraction)
    return split_and_shard(pairs, data, seed)


def assert_whole_groups(groups: list, chosen: np.ndarray) -> None:
    per_group = pd.Series(chosen).groupby(pd.Series([str(g) for g in groups])).nunique()
    assert (per_group == 1).all(), per_group[per_group > 1].index.tolist()


# No deadlines: the machine is shared, and a slow example is not a wrong one.
@settings(deadline=None)
@given(groups=group_lists, test_fraction=test_fractions, shard_fraction=shard_fractions, seed=seeds)
def test_no_group_crosses_test_train_or_shard_rest(groups, test_fraction, shard_fraction, seed):
    pairs = frame_of(groups)
    is_test, in_shard = sides(pairs, test_fraction, shard_fraction, seed)
    assert is_test.dtype == bool and in_shard.dtype == bool and len(is_test) == len(in_shard) == len(groups)
    assert_whole_groups(groups, is_test)
    assert_whole_groups(groups, in_shard)
    assert not (is_test & in_shard).any()  # the shard is drawn from the training pairs
    assert in_shard.any() == (~is_test).any()  # at least one group whenever there is a training pair


@settings(deadline=None)
@given(groups=group_lists, test_fraction=test_fractions, shard_fraction=shard_fractions, seed=seeds,
       order_seed=seeds)
def test_deterministic_and_independent_of_row_order(groups, test_fraction, shard_fraction, seed, order_seed):
    pairs = frame_of(groups)
    is_test, in_shard = sides(pairs, test_fraction, shard_fraction, seed)
    again = sides(pairs, test_fraction, shard_fraction, seed)
    assert np.array_equal(again[0], is_test) and np.array_equal(again[1], in_shard)
    order = np.random.default_rng(order_seed).permutation(len(pairs))
    shuffled = sides(pairs.iloc[order].reset_index(drop=True), test_fraction, shard_fraction, seed)
    assert np.array_equal(shuffled[0], is_test[order]) and np.array_equal(shuffled[1], in_shard[order])


@settings(deadline=None)
@given(groups=group_lists, test_fraction=test_fractions, seed=seeds)
def test_test_side_depends_on_the_group_key_alone(groups, test_fraction, seed):
    ids = [f"pair{i}" for i in range(len(groups))]
    is_test = split_test(ids, test_fraction, seed, groups=groups)
    # A pair's side does not depend on the other pairs: the first half alone splits the same way.
    half = len(ids) // 2
    assert np.array_equal(split_test(ids[:half], test_fraction, seed, groups=groups[:half]), is_test[:half])


@settings(deadline=None)
@given(ids=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=100, unique=True),
       test_fraction=test_fractions, shard_fraction=shard_fractions, seed=seeds)
def test_without_groups_each_pair_is_its_own_group(ids, test_fraction, shard_fraction, seed):
    assert np.array_equal(split_test(ids, test_fraction, seed), split_test(ids, test_fraction, seed, groups=ids))
    shard = choose_shard(ids, shard_fraction, seed)
    assert np.array_equal(shard, choose_shard(ids, shard_fraction, seed, groups=ids))
    assert shard.sum() == min(len(ids), max(1, round(shard_fraction * len(ids))))  # exactly, as before groups


def large_grouped_corpus(seed: int, n_groups: int = 1500) -> list[int]:
    """About 4.5k pairs in ``n_groups`` groups of 1 to 5 pairs, shuffled."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), rng.integers(1, 6, size=n_groups))
    return rng.permutation(groups).tolist()


@settings(max_examples=30, deadline=None)
@given(test_fraction=st.floats(min_value=0.05, max_value=0.95), shard_fraction=st.floats(min_value=0.05,
                                                                                         max_value=1.0),
       seed=seeds)
def test_fractions_hold_on_large_inputs(test_fraction, shard_fraction, seed):
    groups = large_grouped_corpus(seed)
    sizes = pd.Series(groups).value_counts()
    is_test, in_shard = sides(frame_of(groups), test_fraction, shard_fraction, seed)
    # Test: each group with chance test_fraction; five binomial standard deviations of slack.
    test_groups = pd.Series(is_test).groupby(pd.Series(groups)).first()
    group_sd = np.sqrt(test_fraction * (1 - test_fraction) / len(sizes))
    assert abs(test_groups.mean() - test_fraction) < 5 * group_sd
    pair_sd = np.sqrt(test_fraction * (1 - test_fraction) * (sizes**2).sum()) / len(groups)
    assert abs(is_test.mean() - test_fraction) < 5 * pair_sd
    # Shard: the share of the training pairs, off by less than one group.
    train = int((~is_test).sum())
    assert abs(int(in_shard.sum()) - max(1, round(shard_fraction * train))) <= sizes.max()


def test_group_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="groups has 1 values for 2 ids"):
        split_test(["x", "y"], 0.5, 0, groups=["g"])
    with pytest.raises(ValueError, match=r"groups: pair 'y' has no group \(1 pairs without one\)"):
        choose_shard(["x", "y"], 0.5, 0, groups=["g", None])
    with pytest.raises(TypeError, match="not one string"):
        split_test("xy", 0.5, 0)
    assert choose_shard([], 0.5, 0, groups=[]).shape == (0,)
