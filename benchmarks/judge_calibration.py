"""Does a judge's log-probability margin say where it is wrong? Its labels' accuracy by confidence.

Reads ``judge/labels.parquet`` of finished runs (a row per judged pair: ``label``, ``confidence``, the summed
log-probability margin ``logprob_margin`` over both orders, and ``human_label``, the run's ground truth), keeps
each pair once, and prints the labels' accuracy by the judge's confidence class and by quintile of
``|logprob_margin|``, with 95% Wilson intervals, and the AUROC of ``|logprob_margin|`` for telling right labels
from wrong ones (0.5: no signal). That is what ``selection.judge_signal: least_confident_first`` bets on.

    python benchmarks/judge_calibration.py runs/experiment_hh_judge_signal/runs/*/
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from rlthf.core.metrics import wilson_interval


def judged_pairs(run_dirs: list[Path]) -> pd.DataFrame:
    frames = [pd.read_parquet(d / "judge" / "labels.parquet") for d in run_dirs if (d / "judge" / "labels.parquet").exists()]
    if not frames:
        raise SystemExit("no judge/labels.parquet under the runs given")
    pairs = pd.concat(frames, ignore_index=True).drop_duplicates("id").reset_index(drop=True)
    return pairs[pairs["label"].notna() & pairs["human_label"].notna()].reset_index(drop=True)


def accuracy_row(name: str, right: np.ndarray) -> str:
    low, high = wilson_interval(right.sum(), len(right))
    return f"| {name} | {len(right)} | {100 * right.mean():.1f} [{100 * low:.1f}, {100 * high:.1f}] |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories")
    args = parser.parse_args()
    pairs = judged_pairs(args.runs)
    right = (pairs["label"] == pairs["human_label"]).to_numpy()
    lines = ["| pairs | n | AI label accuracy % [95%] |", "|---|---:|---:|", accuracy_row("all labelled", right)]
    for confidence in ("consistent", "inconsistent", "single"):
        chosen = (pairs["confidence"] == confidence).to_numpy()
        if chosen.any():
            lines.append(accuracy_row(f"confidence {confidence}", right[chosen]))
    magnitude = pairs["logprob_margin"].abs().to_numpy(dtype=float)
    scored = np.isfinite(magnitude)
    if scored.sum() >= 5:
        quintile = pd.qcut(magnitude[scored], 5, labels=False, duplicates="drop")
        for q in np.unique(quintile):
            chosen = quintile == q
            span = magnitude[scored][chosen]
            lines.append(accuracy_row(f"|logprob margin| quintile {q + 1} ({span.min():.2f}-{span.max():.2f})",
                                      right[scored][chosen]))
        if 0 < right[scored].sum() < scored.sum():
            auroc = roc_auc_score(right[scored], magnitude[scored])
            lines.append(f"\nAUROC of |logprob margin| for a right label: {auroc:.3f} ({scored.sum()} pairs)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
