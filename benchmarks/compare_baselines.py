"""RLTHF against the paper's baselines over several seeds: the four baseline methods of
configs/experiment_hh_rlhf.yaml, run and reported by ``rlthf.studies.experiment``.

    python benchmarks/compare_baselines.py --seeds 0 1 2     # -> runs/baselines/report.md

Methods, each on the same split, shard, simulated AI labels and seed (paper appendix C.3); their overrides of
configs/demo.yaml are in configs/experiment_hh_rlhf.yaml:
- AI-only: reward model 0, trained on the simulated AI labels alone;
- Random: the same number of human labels as RLTHF, drawn at random, on top of the AI labels;
- RLTHF: configs/demo.yaml;
- Human: every shard pair human-labelled.
The whole comparison, with the other selectors and the ablations, is
``rlthf experiment --config configs/experiment_hh_rlhf.yaml`` (docs/experiments/report.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rlthf.studies.experiment import load_experiment, run_experiment

REPO = Path(__file__).resolve().parents[1]
BASELINES = ["AI-only", "Random", "RLTHF", "Human"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs/experiment_hh_rlhf.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/baselines")
    args = parser.parse_args()
    config = load_experiment(args.config, [f"seeds={args.seeds}", f"output_dir={args.out}"])
    config.groups = {"baselines": BASELINES}
    run_experiment(config, methods=BASELINES)
    print(f"report: {args.out}/report.md")


if __name__ == "__main__":
    main()
