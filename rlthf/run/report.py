"""The run's report: the per-iteration table, the end-of-run summary, the paper's figure 2 for every iteration
(reward distribution and accuracy density) and the accuracy curve."""
from __future__ import annotations

import logging

from pathlib import Path
from typing import Optional

import numpy as np

from rlthf.core.curve import CurveAnalysis, smooth


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curve(analysis: CurveAnalysis, label_correct: Optional[np.ndarray], path: str | Path, title: str) -> None:
    """Left: margins by rank, coloured by whether the working label is right, with the landmarks.
    Right: accuracy density, the share of right labels in a moving window of ranks."""
    plt = pyplot()
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
    plt = pyplot()
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


def _estimate(summary: dict, name: str) -> str:
    e = summary["estimate"][name]
    if e["value"] is None:
        return "n/a (no audit pair to measure it)"
    return f"{e['value']:.1%} [{e['low']:.1%}, {e['high']:.1%}]"


def summary_text(summary: dict, curated_path) -> str:
    """The end-of-run message: what was curated, how, and what the audit says it is worth."""
    decision = summary["curation"]
    lines = [f"curated {summary['curated_pairs']} pairs -> {curated_path}",
             f"  labels: {', '.join(f'{n} {source}' for source, n in summary['label_sources'].items())}; "
             f"policy {decision['policy']}: {decision['reason']}",
             f"  human labels: {summary['human_labels']} ({summary['human_pct_corpus']:.2f}% of the corpus), "
             f"{summary['audit_labels']} of them the audit"]
    if summary.get("audit_pairs"):
        lines += [f"  audit estimates, 95% intervals, from {summary['audit_pairs']} random pairs people labelled:",
                  f"    curated dataset   {_estimate(summary, 'curated')}",
                  f"    AI labels         {_estimate(summary, 'ai')}  (the {summary['ai_labelled_pairs']} pairs "
                  f"the AI labelled; curated there: {_estimate(summary, 'curated_where_ai')})",
                  f"    reward model      {_estimate(summary, 'rm')}  (the pairs without a targeted human label)"]
    else:
        lines.append("  no audit (annotation.audit_fraction=0): nothing measured the curated labels")
    unlabelled = summary["curated_pairs"] - summary.get("ai_labelled_pairs", summary["curated_pairs"])
    if unlabelled > 0 and summary.get("ai_labels_source") == "judge":
        lines.append(f"  {unlabelled} corpus pairs have no AI label (the judge labels the shard), so they carry "
                     "the reward model's label, worth the estimate above; to give them the judge's, judge the "
                     "whole corpus (data.shard_fraction=1) or bring the labels in a column (ai_labels.source=column)")
    elif unlabelled > 0:
        lines.append(f"  {unlabelled} corpus pairs have no AI label (the judge's two orders disagreed, or it gave "
                     "no verdict), so they carry the reward model's label")
    if summary.get("curated_label_acc") == summary.get("curated_label_acc"):  # not NaN: the data has a truth
        lines.append(f"  against the ground truth: curated {summary['curated_label_acc']:.1%} (where the AI "
                     f"labelled: {summary['curated_label_acc_where_ai']:.1%}), AI labels "
                     f"{summary['ai_label_acc_corpus']:.1%}, reward model {summary['rm_label_acc_corpus']:.1%}")
    return "\n".join(lines)


def warn_if_worse(summary: dict) -> None:
    """Loudly, as the eyes-off check does, when the audit puts the curated set below the AI labels it started
    from."""
    estimate = summary.get("estimate", {})
    curated, ai = (estimate.get(k, {}).get("value") for k in ("curated_where_ai", "ai"))
    if curated is not None and ai is not None and curated < ai:
        logging.getLogger("rlthf").warning(
            "CURATED DATA BELOW ITS AI LABELS: on the %d pairs the AI labelled, the audit estimates the curated "
            "labels at %.1f%% and the AI's at %.1f%%. Curate with the AI labels (curate.policy=ai or auto) or "
            "improve the reward model.", summary["ai_labelled_pairs"], 100 * curated, 100 * ai)
