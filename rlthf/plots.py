"""The paper's figure 2 for every iteration (reward distribution and accuracy density) and the accuracy curve."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from rlthf.analysis import CurveAnalysis, smooth


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curve(analysis: CurveAnalysis, label_correct: Optional[np.ndarray], path: str | Path, title: str) -> None:
    """Left: margins by rank, coloured by whether the working label is right, with the landmarks.
    Right: accuracy density, the share of right labels in a moving window of ranks."""
    plt = _pyplot()
    ranks = np.arange(analysis.n)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if label_correct is None:
        ax.plot(ranks, analysis.sorted_margins, ".", ms=2)
    else:
        right = np.asarray(label_correct, bool)[analysis.order]
        ax.plot(ranks[right], analysis.sorted_margins[right], ".", ms=2, color="tab:green", label="label right")
        ax.plot(ranks[~right], analysis.sorted_margins[~right], ".", ms=2, color="tab:red", label="label wrong")
    ax.axhline(0, color="grey", lw=0.5)
    for index, name, colour in [(analysis.elbow_index, "elbow", "tab:blue"), (analysis.knee_index, "knee", "tab:orange"),
                                (analysis.reflection_index, "reflection", "tab:purple")]:
        if index < analysis.n:
            ax.axvline(index, color=colour, ls="--", lw=1, label=f"{name} ({index})")
    ax.set_xlabel("rank")
    ax.set_ylabel("reward margin under the working label")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax = axes[1]
    if label_correct is not None:
        window = max(5, analysis.n // 20) | 1
        density = smooth(np.asarray(label_correct, float)[analysis.order], window)
        ax.plot(ranks, density, color="tab:green")
        ax.set_ylim(0, 1.02)
    ax.set_xlabel("rank")
    ax.set_ylabel("accuracy density")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(rows: list[dict], path: str | Path) -> None:
    """Test accuracy (with its 95% interval) and shard label accuracy against % of the corpus human-labelled."""
    plt = _pyplot()
    x = [r["human_pct_corpus"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    test = [r["test_acc"] for r in rows]
    lo = [r["test_acc_ci"][0] for r in rows]
    hi = [r["test_acc_ci"][1] for r in rows]
    ax.plot(x, test, "o-", label="reward model, test accuracy")
    ax.fill_between(x, lo, hi, alpha=0.2)
    ax.plot(x, [r["label_acc"] for r in rows], "s-", label="working labels, shard accuracy")
    ax.set_xlabel("% of corpus human-labelled")
    ax.set_ylabel("accuracy vs ground truth")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
