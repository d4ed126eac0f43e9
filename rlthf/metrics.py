"""Accuracies with their intervals, and the per-iteration table."""
from __future__ import annotations

import math

import numpy as np


def wilson_interval(correct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n`` (95% for z = 1.96)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def preference_accuracy(reward_a, reward_b, truth) -> float:
    """Share of pairs whose truly preferred response gets the higher reward (a tie counts half)."""
    margin = np.asarray(reward_a, float) - np.asarray(reward_b, float)
    sign = np.where(np.asarray(truth).astype(str) == "a", 1.0, -1.0)
    agreement = np.sign(margin * sign)
    return float(np.mean((agreement + 1) / 2))


def label_accuracy(labels, truth) -> float:
    labels, truth = np.asarray(labels).astype(str), np.asarray(truth).astype(str)
    return float(np.mean(labels == truth)) if len(labels) else float("nan")


def rm_labels(reward_a, reward_b) -> np.ndarray:
    """The label a reward model gives: the response with the higher reward (a on a tie)."""
    return np.where(np.asarray(reward_a) >= np.asarray(reward_b), "a", "b").astype(object)


TABLE_COLUMNS = [
    ("iteration", "iter", "{:d}"),
    ("human_labels", "human", "{:d}"),
    ("human_pct_shard", "%shard", "{:.1f}"),
    ("human_pct_corpus", "%corpus", "{:.2f}"),
    ("batch_was_wrong", "wrong/asked", None),
    ("flips_right", "flips ok/all", None),
    ("label_acc", "label acc", "{:.1%}"),
    ("rm_label_acc", "rm-label acc", "{:.1%}"),
    ("test_acc", "test acc [95% CI]", None),
    ("knee_index", "elbow/knee/refl", None),
    ("train_rows", "train rows", "{:d}"),
    ("wall_s", "time s", "{:.0f}"),
]


# "a/b" cells: human answers that corrected a wrong working label / answers; flips that were right / flips
RATIO_CELLS = {"batch_was_wrong": ("batch_was_wrong", "asked"), "flips_right": ("flips_right", "flips")}


def _cell(row: dict, key: str, fmt: str | None) -> str:
    if key in RATIO_CELLS:
        numerator, denominator = RATIO_CELLS[key]
        return f"{row.get(numerator, 0)}/{row.get(denominator, 0)}"
    if key == "test_acc":
        lo, hi = row["test_acc_ci"]
        return f"{row['test_acc']:.1%} [{lo:.1%}, {hi:.1%}]"
    if key == "knee_index":
        if row.get("elbow_index") is None:
            return "-"
        return f"{row['elbow_index']}/{row['knee_index']}/{row['reflection_index']}"
    value = row.get(key)
    return "-" if value is None else fmt.format(value)


def format_table(rows: list[dict]) -> str:
    """The per-iteration table as aligned text (also valid as a markdown table)."""
    header = [title for _, title, _ in TABLE_COLUMNS]
    body = [[_cell(r, key, fmt) for key, _, fmt in TABLE_COLUMNS] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(b) for b in body)])
