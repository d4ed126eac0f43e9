"""How often the audit's 95% interval holds the curated labels' true accuracy, on synthetic corpora.

A corpus of ``--pairs`` pairs with known truth: AI labels right 75% of the time, a reward model whose margin is
``truth * (shift + noise)`` (right 50%, 75% or 86% of the time, surer where it is right), an audit of a uniform
sample, then ``curate(policy='auto')`` and the audit's estimate of the curated set
(``estimate_accuracy(..., audit_labels=curated.rule_label)``), as a run does. For each reward model and audit size
it prints, over ``--repeats`` seeds, for each of the ``--ways``: one threshold fitted on the whole audit
(``folds=1``) and measured on the same audit (naive); the same threshold measured by 5-fold cross-validation of
the audit (stop 19's estimate); the corpus dealt into folds each labelled by the threshold fitted on the other
folds' audit pairs (cross-fitted curation, stop 20), its interval the audit's Wilson interval; and the default
since stop 24, the same with the interval widened, where the rule replaced a label, by a bootstrap of the whole
procedure (``CuratedLabels.audit_errors``): the share of runs whose interval held the truth, the mean error of the
estimate, the interval's mean width, the mean curated accuracy and the share of runs where the reward model
replaced anything.

    python benchmarks/audit_coverage.py --repeats 400
"""
from __future__ import annotations

import argparse
import functools
import multiprocessing
import os

import numpy as np

from rlthf.core.audit import audit_sample, estimate_accuracy
from rlthf.core.curation import curate

# reward model: its shift, right Phi(shift) of the time
REWARD_MODELS = {"no better than chance (50%)": 0.0, "as good as the AI (75%)": 0.674, "better (86%)": 1.08}
WAYS = ("naive", "cross-validated", "cross-fitted", "bootstrap")
PERCENT, SHARE = "{:.1%}".format, "{:.0%}".format
POINTS, ACCURACY = (lambda v: f"{100 * v:+.2f}"), (lambda v: f"{100 * v:.1f}")


def cross_validated_labels(ai, margin, human, audited, seed: int, folds: int = 5) -> np.ndarray:
    """Stop 19's estimate of one threshold: each audit pair read with the threshold refitted without its fold."""
    labels = np.full(len(ai), None, dtype=object)
    fold_of = np.random.default_rng(seed).permutation(len(audited)) % folds
    for fold in range(folds):
        held_out = audited[fold_of == fold]
        refitted = curate(ai, margin, human, audited[fold_of != fold], folds=1)
        labels[held_out] = refitted.rule_label[held_out]
    return labels


def one_run(seed: int, pairs: int, audit_pairs: int, shift: float, ways: tuple[str, ...], folds: int) -> np.ndarray:
    """Per way: interval held the truth, error of the estimate, interval width, curated accuracy, replaced any."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(np.array(["a", "b"], dtype=object), pairs)
    other = np.where(truth == "a", "b", "a").astype(object)
    ai = np.where(rng.random(pairs) < 0.75, truth, other)
    margin = np.where(truth == "a", 1.0, -1.0) * (shift + rng.standard_normal(pairs))
    audited = audit_sample(rng.random(pairs), np.ones(pairs, bool), audit_pairs)
    human = np.full(pairs, None, dtype=object)
    human[audited] = truth[audited]
    one_threshold = curate(ai, margin, human, audited, folds=1, bootstrap=0)
    # the bootstrap draws its own numbers: the labels are those of bootstrap=0
    cross_fitted = curate(ai, margin, human, audited, folds=folds, seed=seed,
                          bootstrap=400 if "bootstrap" in ways else 0)
    results = []
    for way in ways:
        curated = one_threshold if way in ("naive", "cross-validated") else cross_fitted
        read_as = (cross_validated_labels(ai, margin, human, audited, seed) if way == "cross-validated"
                   else curated.rule_label)
        estimate = estimate_accuracy(curated.label, human, audited, audit_labels=read_as,
                                     audit_errors=curated.audit_errors if way == "bootstrap" else None)
        accuracy = float(np.mean(curated.label == truth))
        results.append((estimate.low <= accuracy <= estimate.high, estimate.value - accuracy,
                        estimate.high - estimate.low, accuracy, curated.decision.replaced > 0))
    return np.array(results, dtype=float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1850, help="corpus pairs (HH-RLHF's train split: 1,850)")
    parser.add_argument("--audit", type=int, nargs="+", default=[20, 46, 92, 185], help="audit sizes")
    parser.add_argument("--folds", type=int, default=10, help="the cross-fitted curation's folds")
    parser.add_argument("--repeats", type=int, default=400, help="seeds per cell")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS), help="the estimates compared")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="processes")
    args = parser.parse_args()
    pool = multiprocessing.Pool(args.jobs)
    print(f"{args.pairs} pairs, AI labels right 75%, {args.repeats} seeds per cell, {args.folds} folds; each "
          f"cell: {' / '.join(args.ways)}\n")
    print("| reward model | audit pairs | interval holds the truth | mean error, pts | interval width, pts "
          "| curated acc % | replaced any |")
    print("|---|---|---|---|---|---|---|")
    for name, shift in REWARD_MODELS.items():
        for audit_pairs in args.audit:
            run = functools.partial(one_run, pairs=args.pairs, audit_pairs=audit_pairs, shift=shift,
                                    ways=tuple(args.ways), folds=args.folds)
            cells = np.mean(pool.map(run, range(args.repeats)), axis=0)
            covered, error, width, accuracy, replaced = (" / ".join(form(cell[i]) for cell in cells) for i, form in
                                                         enumerate((PERCENT, POINTS, ACCURACY, ACCURACY, SHARE)))
            print(f"| {name} | {audit_pairs} | {covered} | {error} | {width} | {accuracy} | {replaced} |",
                  flush=True)


if __name__ == "__main__":
    main()
