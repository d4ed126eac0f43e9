"""Accuracies, Wilson intervals and the per-iteration table, against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rlthf.core.labels import flip_labels, objects_full, objects_where, rm_labels
from rlthf.run.report import TABLE_COLUMNS, format_table
from rlthf.core.metrics import label_accuracy, preference_accuracy, wilson_interval


# wilson_interval

@pytest.mark.parametrize("correct, n, expected", [
    (81, 100, (0.72221, 0.87485)),
    (50, 100, (0.40383, 0.59617)),
    (9, 10, (0.59584, 0.98212)),
    (0, 10, (0.0, 0.27754)),
    (10, 10, (0.72246, 1.0)),
    (1, 1, (0.20654, 1.0)),
])
def test_wilson_interval_known_values(correct, n, expected):
    lo, hi = wilson_interval(correct, n)
    assert (lo, hi) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize("correct, n", [(81, 100), (3, 7), (450.5, 600), (1, 2)])
def test_wilson_bounds_solve_the_score_equation(correct, n):
    # The Wilson bounds are the p with (p_hat - p)^2 = z^2 p (1 - p) / n.
    z, p_hat = 1.96, correct / n
    for p in wilson_interval(correct, n):
        assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, rel=1e-9)


def test_wilson_interval_edges():
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_wilson_interval_z_and_fractional_counts():
    # z = 1 (about 68%) is narrower than z = 1.96; a fractional count (ties count half) is allowed.
    lo1, hi1 = wilson_interval(81, 100, z=1.0)
    lo2, hi2 = wilson_interval(81, 100)
    assert lo2 < lo1 < 0.81 < hi1 < hi2
    assert wilson_interval(80.5, 100) == pytest.approx((0.71668, 0.87075), abs=5e-5)


def test_wilson_interval_is_symmetric():
    lo, hi = wilson_interval(19, 100)
    assert (1 - hi, 1 - lo) == pytest.approx(wilson_interval(81, 100), abs=1e-12)


# preference_accuracy, label_accuracy, rm_labels

def test_preference_accuracy_with_tie_counting_half():
    reward_a = [1.0, 0.0, 2.0, 5.0, -1.0]
    reward_b = [0.0, 0.0, 3.0, 1.0, 2.0]
    truth = ["a", "a", "a", "b", "b"]
    # right, tie (half), wrong, wrong, right -> 2.5 / 5
    assert preference_accuracy(reward_a, reward_b, truth) == 0.5


@pytest.mark.parametrize("truth, expected", [(["a", "a"], 1.0), (["b", "b"], 0.0), (["a", "b"], 0.5)])
def test_preference_accuracy_simple(truth, expected):
    assert preference_accuracy(np.array([2.0, 3.0]), np.array([1.0, -3.0]), np.array(truth, dtype=object)) == expected


def test_preference_accuracy_all_ties_is_half():
    assert preference_accuracy([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], ["a", "b", "a"]) == 0.5


def test_label_accuracy():
    assert label_accuracy(["a", "b", "a"], ["a", "a", "a"]) == pytest.approx(2 / 3)
    assert label_accuracy(np.array(["a", "b"], dtype=object), ["a", "b"]) == 1.0
    assert math.isnan(label_accuracy([], []))


def test_rm_labels_tie_goes_to_a():
    labels = rm_labels([1.0, 2.0, 3.0, -0.5], [1.0, 3.0, 2.0, -0.25])
    assert labels.tolist() == ["a", "b", "a", "b"]
    assert labels.dtype == object


def test_label_arrays_hold_one_python_string_per_value():
    # numpy's where and full would make a string per element (50 MB for a million labels)
    for labels in (rm_labels(np.arange(1000.0), np.full(1000, 500.0)), flip_labels(["a", "b"] * 500),
                   objects_where(np.arange(1000) % 3 == 0, "rm", objects_full(1000, "ai"))):
        assert labels.dtype == object and len({id(value) for value in labels}) == 2
    assert objects_where([True, False], "human", np.array([None, "ai"], dtype=object)).tolist() == ["human", "ai"]
    assert objects_full(3, None).tolist() == [None] * 3 and objects_full(0, "ai").shape == (0,)


# format_table

ROW_0 = {"iteration": 0, "human_labels": 0, "human_pct_shard": 0.0, "human_pct_corpus": 0.0, "label_acc": 0.75,
         "rm_label_acc": 0.8, "test_acc": 0.857, "test_acc_ci": [0.823, 0.886], "elbow_index": None,
         "knee_index": None, "reflection_index": None, "train_rows": 500, "wall_s": 12.4}
ROW_1 = {"iteration": 1, "human_labels": 20, "asked": 20, "batch_was_wrong": 15, "human_pct_shard": 4.0, "human_pct_corpus": 1.0, "flips": 30,
         "flips_right": 24, "label_acc": 0.8123, "rm_label_acc": 0.85, "test_acc": 0.8612,
         "test_acc_ci": [0.8261, 0.8897], "elbow_index": 64, "knee_index": 433, "reflection_index": 454,
         "train_rows": 1234, "wall_s": 3.6}

HEADER = ["iter", "human", "%shard", "%corpus", "wrong/asked", "flips ok/all", "label acc", "rm-label acc", "test acc [95% CI]",
          "elbow/knee/refl", "train rows", "time s"]


def cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |")
    return [c.strip() for c in line[2:-2].split(" | ")]


def test_format_table_cells():
    lines = format_table([ROW_0, ROW_1]).split("\n")
    assert len(lines) == 4
    assert cells(lines[0]) == HEADER
    assert cells(lines[2]) == ["0", "0", "0.0", "0.00", "0/0", "0/0", "75.0%", "80.0%", "85.7% [82.3%, 88.6%]", "-",
                               "500", "12"]
    assert cells(lines[3]) == ["1", "20", "4.0", "1.00", "15/20", "24/30", "81.2%", "85.0%", "86.1% [82.6%, 89.0%]",
                               "64/433/454", "1234", "4"]


def test_format_table_layout():
    lines = format_table([ROW_0, ROW_1]).split("\n")
    # The test-accuracy cell (20 characters) is wider than its title (17): the title is right-aligned in it.
    assert lines[0] == ("| iter | human | %shard | %corpus | wrong/asked | flips ok/all | label acc | rm-label acc | "
                        "   test acc [95% CI] | elbow/knee/refl | train rows | time s |")
    widths = [4, 5, 6, 7, 11, 12, 9, 12, 20, 15, 10, 6]
    assert lines[1] == "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    assert len({len(line) for line in lines}) == 1
    assert lines[2].startswith("|    0 |     0 |") and "|               - |" in lines[2]


def test_format_table_without_rows():
    lines = format_table([]).split("\n")
    assert len(lines) == 2
    assert cells(lines[0]) == HEADER
    assert lines[1] == "|" + "|".join("-" * (len(h) + 2) for h in HEADER) + "|"


def test_format_table_missing_value_is_a_dash():
    row = {**ROW_1, "train_rows": None}
    assert cells(format_table([row]).split("\n")[2])[10] == "-"


def test_table_columns_match_header():
    assert [title for _, title, _ in TABLE_COLUMNS] == HEADER
