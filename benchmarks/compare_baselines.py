"""RLTHF against the paper's baselines on the demo setting, over several seeds (not a test: it prints a table).

    python benchmarks/compare_baselines.py --seeds 0 1 2

Methods, each on the same split, shard, simulated AI labels and seed (paper appendix C.3):
- AI-only: reward model 0, trained on the simulated AI labels alone;
- Random: the same number of human labels as RLTHF, drawn at random, on top of the AI labels;
- RLTHF: configs/demo.yaml;
- Human: every shard pair human-labelled.
ROI is the gain over AI-only per 1% of the corpus human-labelled, as in the paper (section 4.1.2).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rlthf.config import load_config
from rlthf.loop import run

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "AI-only": ["selection.iterations=0", "annotation.eyes_off_min=0", "annotation.eyes_off_fraction=0"],
    "Random": ["selection.selector=random"],
    "RLTHF": [],
    "Human": ["selection.selector=random", "selection.iterations=1", "selection.annotation_fraction=1.0",
              "annotation.eyes_off_min=0", "annotation.eyes_off_fraction=0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs/demo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/baselines")
    args = parser.parse_args()

    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    for seed in args.seeds:
        for method, overrides in METHODS.items():
            config = load_config(args.config, [f"seed={seed}", f"output_dir={args.out}/{method}_seed{seed}",
                                               *overrides])
            result = run(config, echo=lambda _: None)
            last = result.metrics[-1]
            results[method].append({"seed": seed, "human_pct_corpus": last["human_pct_corpus"],
                                    "human_pct_shard": last["human_pct_shard"], "label_acc": last["label_acc"],
                                    "test_acc": last["test_acc"], "curated_acc": result.summary["curated_label_acc"]})
            print(f"seed {seed} {method:8s} human {last['human_pct_corpus']:5.2f}% of corpus  "
                  f"label acc {last['label_acc']:.3f}  test acc {last['test_acc']:.3f}  "
                  f"curated {result.summary['curated_label_acc']:.3f}", flush=True)

    def mean_std(method: str, key: str) -> tuple[float, float]:
        values = np.array([r[key] for r in results[method]])
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

    ai = {key: mean_std("AI-only", key)[0] for key in ("label_acc", "test_acc", "curated_acc")}
    lines = ["| method | human % corpus | shard label acc | test acc | curated corpus acc | ROI test | ROI curated |",
             "|---|---|---|---|---|---|---|"]
    for method in METHODS:
        pct = mean_std(method, "human_pct_corpus")[0]
        cells = [f"{m:.1%} ± {s:.1%}" for m, s in (mean_std(method, k) for k in ("label_acc", "test_acc", "curated_acc"))]
        roi = [f"{100 * (mean_std(method, k)[0] - ai[k]) / pct:+.2f} pts/%" if pct else "-"
               for k in ("test_acc", "curated_acc")]
        lines.append(f"| {method} | {pct:.2f} | " + " | ".join(cells + roi) + " |")
    table = "\n".join(lines)
    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); mean ± standard deviation\n\n{table}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
