"""What ``curate(policy='auto')`` costs on a large corpus, by audit size.

A synthetic corpus of ``--pairs`` pairs (AI labels right 75%, a reward model as good as them, so about a third of
the audit pairs are disagreements), an audit of each size in ``--audit``; printed: the disagreements, the time of
the sign test's table for them (built once per size and kept), and of the whole ``curate`` call with its
bootstrap (``--bootstrap`` draws) once the table is built.

    python benchmarks/curation_cost.py --pairs 1000000 --audit 2000 20000 50000
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from rlthf.core.curation import _critical_wins, curate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--audit", type=int, nargs="+", default=[2000, 20000, 50000])
    parser.add_argument("--bootstrap", type=int, default=400)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    truth = rng.choice(np.array(["a", "b"], dtype=object), args.pairs)
    ai = np.where(rng.random(args.pairs) < 0.75, truth, np.where(truth == "a", "b", "a")).astype(object)
    margin = np.where(truth == "a", 1.0, -1.0) * (0.674 + rng.standard_normal(args.pairs))
    print(f"{args.pairs} pairs, {args.bootstrap} bootstrap draws\n")
    print("| audit pairs | disagreements | sign test table, s | curate with its bootstrap, s |")
    print("|---|---|---|---|")
    for size in args.audit:
        audited = np.sort(rng.choice(args.pairs, size, replace=False))
        human = np.full(args.pairs, None, dtype=object)
        human[audited] = truth[audited]
        disagreements = int(((margin[audited] >= 0) != (ai[audited] == "a")).sum())
        start = time.perf_counter()
        _critical_wins(disagreements, 0.05)
        table = time.perf_counter() - start
        start = time.perf_counter()
        curate(ai, margin, human, audited, bootstrap=args.bootstrap)
        print(f"| {size} | {disagreements} | {table:.1f} | {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
