"""Curation: one label for every pair of the corpus, never worse than the labels the run started from.

The paper (section 3.2.5) relabels every pair without a human label with the final reward model (RM). That only
helps when the RM is better than the AI labels, and often it is not. The policies:

- ``'rm'``, the paper's: the human label where one exists, else the RM's label.
- ``'ai'``: the human label where one exists, else the base label (the AI label with RLTHF's flips); the RM's
  label only where there is no base label.
- ``'auto'``: as ``'ai'``, but the RM's label replaces the base label where they disagree and
  ``|margin| >= threshold``. The threshold is fitted on the evidence pairs (the audit: a uniform sample of the
  pairs the rule will label, with human labels). Among the candidate thresholds (the distinct |margin| of the
  evidence pairs where the RM disagrees with the base label, and +inf), one is accepted only when the RM's wins
  (RM right, base wrong) beat its losses on the evidence pairs it would replace in a one-sided exact sign test,
  at a family-wise level ``alpha`` over all the candidates (:func:`_critical_wins`); among those accepted, the
  one with the most wins minus losses. None accepted: +inf, the base labels stay. ``alpha`` bounds the chance
  that a threshold replaces anything when the RM is no better than the base label; a worse RM passes more rarely
  still, but an audit that happens to flatter the RM can. Across the folds below the chance grows a little (an RM
  right 62% of the time against AI labels right 75%, 200 audit pairs, 300 seeds: 2.3% of runs replaced
  something with one threshold, 3.7% with ten folds).

Cross-fitting. A threshold chosen on the audit and then measured on the same audit looks better than it is
(by 1.5-5 points in ``benchmarks/audit_coverage.py``), and measuring it instead by cross-validation (the threshold
refitted without each audit pair) measures a different rule, pessimistically: its 95% interval held the truth in
80-86% of the simulated runs where the RM was better and the audit small. So ``'auto'`` deals the corpus into
``folds`` folds and labels each fold with the threshold fitted on the evidence of the other folds. Every label is
then given by a rule that never saw the audit pairs of its fold, and those pairs, labelled by the same rule
(``CuratedLabels.rule_label``), measure it without bias (:func:`rlthf.core.audit.estimate_accuracy`): mean error
within 0.7 points. The price is that each rule sees ``(folds - 1) / folds`` of the evidence (0.0-0.7 points of
curated accuracy in the same simulations).

The bootstrap. Unbiased is not binomial: a fold's rule adapts to the other folds' audit pairs, whose own rules
adapt to it, so the folds' errors are correlated, and the audit's binomial interval held the truth in only
90-94.5% of the simulated runs where the rule replaced labels. Where it did, :func:`rule_errors` bootstraps the
whole procedure on the audit (``CuratedLabels.audit_errors``) and the interval becomes the wider of the two:
94.5-96% in the same simulations, 1-3 points wider (``benchmarks/audit_coverage.py``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import asdict, dataclass

import numpy as np

from rlthf.core.audit import label_codes, selection_mask
from rlthf.core.labels import objects_full, objects_where

POLICIES = ("auto", "ai", "rm")


@dataclass(frozen=True)
class CurationDecision:
    """What the curation did and why, for the run's summary."""

    policy: str
    # Per fold, the RM's label replaces a base label where they disagree and |margin| >= threshold: inf never,
    # 0.0 always ('ai': one inf, 'rm': one 0.0).
    thresholds: tuple[float, ...]
    evidence_pairs: int  # evidence pairs with a base label
    disagreements: int  # of them, those where the RM's label is not the base label
    rm_right: int  # of those, where the RM's label is the human one
    wins: int  # evidence pairs the rule of their fold replaces where the RM is right (and the base label wrong)
    losses: int  # evidence pairs the rule of their fold replaces where the base label is right
    replaced: int  # pairs without a human label whose base label the RM's label replaced
    filled: int  # pairs with neither a human nor a base label, labelled by the RM
    reason: str  # one line, for people

    def summary(self) -> dict:
        """The fields as a JSON-ready dict (an infinite threshold becomes None: no replacement)."""
        return {**asdict(self), "thresholds": [None if math.isinf(t) else t for t in self.thresholds]}


@dataclass(frozen=True, eq=False)
class CuratedLabels:
    label: np.ndarray  # object, 'a' or 'b' for every pair
    source: np.ndarray  # object: 'human', the base label's source where it stayed (e.g. 'ai', 'flipped'), or 'rm'
    # object, 'a' or 'b' for every pair: the label the rule of its fold gives it, its human label aside; on the
    # audit pairs, the honest ``audit_labels`` of rlthf.core.audit.estimate_accuracy
    rule_label: np.ndarray
    decision: CurationDecision
    # 'auto', where its rule replaced a label: per bootstrap draw of the whole procedure, the audit's estimate of
    # the rule's accuracy on the pairs without a human label minus that accuracy (:func:`rule_errors`); the
    # ``audit_errors`` of rlthf.core.audit.estimate_accuracy. Empty for 'ai' and 'rm', whose rule fits nothing,
    # and where 'auto' kept every base label.
    audit_errors: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))


def curate(base_label, rm_margin, human_label, evidence, *, policy: str = "auto", base_source=None,
           alpha: float = 0.05, folds: int = 10, seed: int = 0, bootstrap: int = 400) -> CuratedLabels:
    """A label for every pair: the human label where one exists, else what ``policy`` says.

    Parameters
    ----------
    base_label : array-like of {'a', 'b', None}, shape (n,)
        The run's working label: the AI label, flipped where RLTHF flipped it; None where the judge gave none.
    rm_margin : array-like of float, shape (n,)
        The final RM's ``reward_a - reward_b``; its label is 'a' where the margin is >= 0.
    human_label : array-like of {'a', 'b', None}, shape (n,)
        Human labels: the targeted ones and the audit's.
    evidence : array-like of bool, shape (n,), or of int
        The pairs that measure the RM against the base label (a mask or positions): a uniform sample of the pairs
        the rule will label, i.e. the audit, never the targeted pairs (chosen where the AI label looks wrong).
        Each must have a human label. Read by ``'auto'``; reported for the others.
    policy : {'auto', 'ai', 'rm'}, default='auto'
        See the module's docstring.
    base_source : array-like of str, shape (n,), optional
        The source of each base label (e.g. 'ai', 'flipped'), kept where the base label stays. Default: 'ai'.
    alpha : float, default=0.05
        The family-wise level at which ``'auto'`` must find the RM better before it replaces anything.
    folds : int, default=10
        ``'auto'``: the folds the pairs are dealt into (the evidence pairs evenly), each labelled by the
        threshold fitted on the other folds' evidence. 1: one threshold fitted on all the evidence, whose
        ``rule_label`` on the evidence pairs then flatters it.
    seed : int, default=0
        Seeds the dealing into folds and the bootstrap.
    bootstrap : int, default=400
        ``'auto'``, where its rule replaced a label: draws of :func:`rule_errors`, which widen the audit's
        interval by what fitting the rule on the audit adds to its error (0: none, the audit's binomial interval
        alone).

    Returns
    -------
    CuratedLabels
        ``label``, ``source``, ``rule_label``, the ``decision`` and the bootstrap's ``audit_errors``.

    Raises
    ------
    ValueError
        Naming the argument: an unknown ``policy``, an ``alpha`` outside (0, 1), ``folds`` not an integer >= 1,
        a length other than ``base_label``'s, a label other than 'a', 'b' or None, a margin that is not finite,
        or evidence pairs without a human label.
    """
    base, margin, human, evidence_mask = _checked_inputs(base_label, rm_margin, human_label, evidence)
    _check_options(policy, alpha, folds)
    if not isinstance(bootstrap, numbers.Integral) or isinstance(bootstrap, bool) or bootstrap < 0:
        raise ValueError(f"bootstrap must be an integer >= 0, got {bootstrap!r}")
    sources = _checked_sources(base_source, len(base))
    fold_count = folds if policy == "auto" else 1  # 'ai' and 'rm' fit nothing
    fold = _deal(evidence_mask, fold_count, seed)
    rm = _rm_codes(margin)
    rule, takes_rm = np.empty(len(base), dtype=np.int8), np.empty(len(base), dtype=bool)
    thresholds = (_fold_thresholds(base, rm, margin, human, evidence_mask, fold, fold_count, alpha)
                  if policy == "auto" else [0.0 if policy == "rm" else math.inf])
    for k, threshold in enumerate(thresholds):
        in_fold = fold == k
        rule[in_fold], takes_rm[in_fold] = _rule_labels(policy, base[in_fold], rm[in_fold], margin[in_fold],
                                                        threshold)
    has_human = human != 0
    source = objects_where(has_human, "human", objects_where(takes_rm, "rm", sources))
    with_base = evidence_mask & (base != 0)
    disagree = with_base & (rm != base)
    replaced_evidence = disagree & takes_rm
    record = dict(evidence_pairs=int(with_base.sum()), disagreements=int(disagree.sum()),
                  rm_right=int((disagree & (rm == human)).sum()),
                  wins=int((replaced_evidence & (rm == human)).sum()),
                  losses=int((replaced_evidence & (rm != human)).sum()),
                  replaced=int((~has_human & (base != 0) & (rule != base)).sum()),
                  filled=int((~has_human & (base == 0)).sum()))
    thresholds = tuple(float(t) for t in thresholds)
    decision = CurationDecision(policy=policy, thresholds=thresholds, **record,
                                reason=_reason(policy, thresholds, record, alpha))
    # labels the rule left as they were (the base labels, or the RM's where there is no base label) were fixed
    # before the audit: its binomial interval holds for them
    fitted = policy == "auto" and record["replaced"] + record["wins"] + record["losses"] > 0
    errors = (rule_errors(base, rm, margin, human, evidence_mask, alpha=alpha, folds=fold_count, draws=bootstrap,
                          seed=seed) if fitted else np.empty(0))
    return CuratedLabels(label=_as_labels(np.where(has_human, human, rule)), source=source,
                         rule_label=_as_labels(rule), decision=decision, audit_errors=errors)


def rule_errors(base, rm, margin, human, evidence, *, alpha: float, folds: int, draws: int,
                seed: int) -> np.ndarray:
    """The error of the audit's estimate of the ``'auto'`` rule, by a bootstrap of the whole procedure.

    Cross-fitting makes the estimate unbiased, but not binomial: each fold's threshold is fitted on the other
    folds' audit pairs, so the folds' errors are correlated, and the binomial interval held the truth in only
    90-94.5% of simulated runs where the RM replaced labels. Here the audit pairs stand for the population they were
    drawn from (a pseudo-population). Each draw resamples an audit of the same size from it (with replacement) and
    the pairs without a human label (as counts over the audit pairs and folds), deals the audit into folds, fits
    each fold's threshold on the other folds as :func:`curate` does, and records the estimate (the resampled
    audit read with its fold's rule) minus the truth (the resampled unlabelled pairs under their fold's rule).
    The quantiles of those errors give the interval ``estimate - error`` (see
    :func:`rlthf.core.audit.corpus_accuracy`). Codes: +1 'a', -1 'b', 0 none; ``rm`` the RM's.

    Returns
    -------
    np.ndarray of float, shape (draws,)
        Empty when there is no audit pair, no pair without a human label, or ``draws`` is 0.
    """
    audit = np.flatnonzero(evidence)
    unlabelled = int((human == 0).sum())
    if len(audit) == 0 or unlabelled == 0 or draws == 0:
        return np.empty(0)
    base, rm, margin, human = base[audit], rm[audit], margin[audit], human[audit]
    size = len(audit)
    rng = np.random.default_rng([seed, size, 0xA0D17])
    errors = np.empty(draws)
    for draw in range(draws):
        picked = rng.integers(0, size, size)
        fold = rng.permutation(size) % folds
        unlabelled_counts = rng.multinomial(unlabelled, np.full(size * folds, 1.0 / (size * folds)))
        thresholds = _fold_thresholds(base[picked], rm[picked], margin[picked], human[picked],
                                      np.ones(size, dtype=bool), fold, folds, alpha)
        # pair j under fold k's rule
        right = _rule_labels("auto", base[:, None], rm[:, None], margin[:, None], thresholds)[0] == human[:, None]
        estimate = right[picked, fold].mean()
        errors[draw] = estimate - unlabelled_counts @ right.ravel() / unlabelled
    return errors


def _deal(evidence: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each pair's fold: the evidence pairs dealt evenly in a seeded random order, the others at random."""
    rng = np.random.default_rng(seed)
    fold = rng.integers(0, folds, len(evidence))
    positions = np.flatnonzero(evidence)
    fold[positions] = rng.permutation(len(positions)) % folds
    return fold


def _fold_thresholds(base, rm, margin, human, evidence, fold, folds: int, alpha: float) -> np.ndarray:
    """Per fold k, the ``'auto'`` threshold on |margin| fitted on the ``evidence`` pairs outside fold k (on all of
    them when ``folds`` is 1). Codes: +1 'a', -1 'b', 0 none; ``rm`` the RM's; ``fold`` each pair's fold."""
    thresholds = np.full(folds, math.inf)
    disagree = evidence & (base != 0) & (rm != base)
    strength = np.abs(margin[disagree])
    order = np.argsort(-strength, kind="stable")
    strength, rm_right = strength[order], (rm == human)[disagree][order]
    if len(strength) == 0:
        return thresholds
    fitted = (fold[disagree][order] != np.arange(folds)[:, None]) if folds > 1 else np.ones((1, len(strength)), bool)
    steps, wins = np.cumsum(fitted, axis=1), np.cumsum(fitted & rm_right, axis=1)
    # A threshold takes all the pairs of one |margin| or none, so only the last of each run is a candidate; one
    # whose pairs all lie in fold k repeats the counts of the candidate above it, which argmax prefers.
    last_of_run = np.append(strength[1:] != strength[:-1], True)
    for k in range(folds):
        if steps[k, -1] == 0:
            continue
        critical = _critical_wins(int(steps[k, -1]), alpha)
        accepted = last_of_run & (steps[k] > 0) & (wins[k] >= critical[np.maximum(steps[k], 1) - 1])
        if accepted.any():
            # argmax takes the first of equal gains: the highest threshold, the fewest replacements
            gain = np.where(accepted, 2 * wins[k] - steps[k], np.iinfo(np.int64).min)
            thresholds[k] = strength[int(np.argmax(gain))]
    return thresholds


_GRID = 48  # sign test levels tried by _critical_wins, log-spaced from alpha / size to alpha


def _critical_wins(steps: int, alpha: float) -> np.ndarray:
    """``critical[k - 1]``: the fewest wins among the k strongest disagreements that show the RM better
    (``k + 1``: no count does).

    Testing every candidate threshold at level alpha would find a "better" RM by chance far more often than
    alpha: over 100 candidates a fair coin passes somewhere about 20% of the time. So the per-step one-sided
    sign test runs at the largest level (of a log grid from the Bonferroni level, always valid, to alpha) at
    which a fair coin, i.e. an RM no better than the base label, reaches any of the ``steps`` boundaries with
    probability at most alpha, computed exactly by dynamic programming.
    """
    size = max(64, 1 << (steps - 1).bit_length())  # one table serves every count up to a power of two
    critical, crossing = _sign_test_table(size, alpha)
    # the crossing chance grows with the level; the lowest level, Bonferroni's, is valid whatever rounding says
    best = max(0, int(np.count_nonzero(crossing[:, steps - 1] <= alpha)) - 1)
    return critical[best, :steps]


@functools.lru_cache(maxsize=8)
def _sign_test_table(size: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per level of the grid: the one-sided sign test's critical wins after k = 1..size tosses, shape
    ``(levels, size)``, and the chance that a fair coin's win count reaches one of them within k tosses.

    Each toss updates only the win counts within ``6 sqrt(k)`` of ``k/2`` (12 standard deviations: the mass
    outside is under 1e-32, and the smallest level's boundary lies within 5): the whole range would cost
    ``size**2`` per level, minutes for an audit with tens of thousands of disagreements."""
    levels = np.geomspace(alpha / size, alpha, _GRID)
    critical = np.empty((_GRID, size), dtype=np.int64)
    crossing = np.empty((_GRID, size))
    pmf = np.zeros(size + 2)  # P(w wins), the walk unbounded
    alive = np.zeros((_GRID, size + 2))  # P(w wins and no boundary reached yet), per level
    pmf[0] = alive[:, 0] = 1.0
    wins = np.arange(size + 2)
    low = 0
    for k in range(1, size + 1):
        spread = 6 * math.sqrt(k)
        band_low, top = max(0, int(k / 2 - spread)), min(k, int(k / 2 + spread) + 1)
        pmf[low:band_low] = alive[:, low:band_low] = 0.0
        low, start = band_low, max(band_low, 1)
        pmf[start : top + 1] = 0.5 * (pmf[start : top + 1] + pmf[start - 1 : top])
        alive[:, start : top + 1] = 0.5 * (alive[:, start : top + 1] + alive[:, start - 1 : top])
        if low == 0:
            pmf[0] *= 0.5
            alive[:, 0] *= 0.5
        # the upper tail P(Binomial(k, 1/2) >= w) falls with w: count the w where it exceeds the level (1 below
        # the band, above every level)
        negative_tail = -np.cumsum(pmf[low : top + 1][::-1])[::-1]
        critical[:, k - 1] = low + np.searchsorted(negative_tail, -levels, side="left")
        alive[:, low : top + 1] *= wins[low : top + 1] < critical[:, k - 1, None]
        crossing[:, k - 1] = 1.0 - alive[:, low : top + 1].sum(axis=1)
    critical.setflags(write=False)
    crossing.setflags(write=False)
    return critical, crossing


def _rule_labels(policy: str, base, rm, margin, threshold) -> tuple[np.ndarray, np.ndarray]:
    """The codes the rule gives pairs without a human label, and where they are the RM's (``rm``: its codes).
    Broadcasts: pairs as a column and thresholds as a row give every pair under every threshold."""
    takes_rm = (base == 0) | ((rm != base) & (np.abs(margin) >= threshold))
    if policy == "rm":
        takes_rm[:] = True
    return np.where(takes_rm, rm, base).astype(np.int8), takes_rm


def _reason(policy: str, thresholds: tuple[float, ...], record: dict, alpha: float) -> str:
    evidence = (f"on the {record['disagreements']} evidence pairs where they disagree the RM was right "
                f"{record['rm_right']} times")
    test = f"one-sided sign test, family-wise level {alpha} over the thresholds"
    passing = [t for t in thresholds if not math.isinf(t)]
    if policy == "rm":
        reason = f"policy 'rm' (the paper's): the RM labels every pair without a human label; {evidence}"
    elif policy == "ai":
        reason = "policy 'ai': the AI label on every pair without a human label"
    elif record["disagreements"] == 0:
        reason = "kept the AI labels: no evidence pair where the RM disagrees with them to judge the RM by"
    elif not passing:
        reason = f"kept the AI labels: {evidence}, and no margin threshold makes it significantly better ({test})"
    elif len(thresholds) == 1:
        reason = (f"the RM replaced the AI label on {record['replaced']} pairs where they disagree and |margin| >= "
                  f"{thresholds[0]:.4g}: there it was right on {record['wins']} evidence pairs and wrong on "
                  f"{record['losses']} ({test})")
    else:
        reason = (f"the RM replaced the AI label on {record['replaced']} pairs where they disagree and |margin| "
                  f"reaches the threshold fitted on the other folds' evidence (found in {len(passing)} of "
                  f"{len(thresholds)} folds, {min(passing):.4g} to {max(passing):.4g}); on the evidence pairs "
                  f"so replaced, each by a rule that did not see it, it was right {record['wins']} times and "
                  f"wrong {record['losses']} ({test})")
    return reason + (f"; the RM labelled the {record['filled']} pairs with no AI label" if record["filled"] else "")


def _checked_inputs(base_label, rm_margin, human_label, evidence):
    base = label_codes(base_label, name="base_label")
    margin = np.asarray(rm_margin, dtype=np.float64)
    if margin.shape != base.shape or not np.isfinite(margin).all():
        raise ValueError(f"rm_margin must hold {len(base)} finite floats like base_label, got shape {margin.shape}"
                         + ("" if margin.shape != base.shape else " with non-finite values"))
    human = label_codes(human_label, name="human_label", size=len(base))
    evidence_mask = selection_mask(evidence, len(base), name="evidence")
    if (human[evidence_mask] == 0).any():
        raise ValueError("evidence selects pairs without a human label")
    return base, margin, human, evidence_mask


def _check_options(policy: str, alpha: float, folds: int) -> None:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if not (isinstance(alpha, numbers.Real) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not isinstance(folds, numbers.Integral) or isinstance(folds, bool) or folds < 1:
        raise ValueError(f"folds must be an integer >= 1, got {folds!r}")


def _checked_sources(base_source, size: int) -> np.ndarray:
    if base_source is None:
        return objects_full(size, "ai")
    sources = np.asarray(base_source, dtype=object)
    if sources.shape != (size,):
        raise ValueError(f"base_source must have shape ({size},) like base_label, got {sources.shape}")
    return sources


def _rm_codes(margin: np.ndarray) -> np.ndarray:
    """The RM's label as a code: 'a' (+1) where reward_a >= reward_b, as ``rlthf.core.labels.rm_labels``."""
    return np.where(margin >= 0, 1, -1).astype(np.int8)


def _as_labels(codes: np.ndarray) -> np.ndarray:
    return objects_where(codes > 0, "a", "b")
