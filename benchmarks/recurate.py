"""The audit's interval on finished runs, recomputed by the current curation: how often it holds the truth.

Each run directory of the experiments given (``<experiment>/runs/<method>_seed<k>``, the methods matching
``--methods``) is copied under ``--out``, its ``final/curate`` step forgotten, and the run resumed in this process:
the final reward model, the audit and every human label are the run's own, only the curation and its estimates
are computed again. Printed per experiment and method: the seeds, the curated labels' true accuracy (the study's
ground truth), how often the audit's 95% interval held it, and the interval's mean width, as the runs first
reported them and as they are now.

    python benchmarks/recurate.py runs/experiment_hh_seeds runs/experiment_vicuna80_v3 --out runs/recurate_s24
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import ray

from rlthf.config import load_config
from rlthf.run.driver import run


def curated_interval(summary: dict) -> tuple[bool, float]:
    estimate = summary["estimate"]["curated"]
    truth = summary["curated_label_acc"]
    return estimate["low"] <= truth <= estimate["high"], estimate["high"] - estimate["low"]


def recurate(run_dir: Path, copy: Path) -> dict:
    """The run's summary after its curation ran again in ``copy``."""
    if not (copy / "summary.json").exists() or not json.loads((copy / "steps.json").read_text()).get("final/curate"):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run_dir, copy)
        steps = json.loads((copy / "steps.json").read_text())
        steps.pop("final/curate")
        (copy / "steps.json").write_text(json.dumps(steps))
    config = load_config(copy / "config.yaml", [f"output_dir={copy}"])
    return run(config, echo=lambda _: None).summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="+", type=Path, help="experiment output directories")
    parser.add_argument("--methods", default=r"AI-only|RLTHF @ \d+%|Random @ 10%",
                        help="a regular expression the method's name must match whole")
    parser.add_argument("--out", type=Path, required=True, help="where the copies are rerun")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print("| experiment | method | seeds | curated acc % | interval holds the truth, then / now "
          "| mean width, pts, then / now |")
    print("|---|---|---|---|---|---|")
    for experiment in args.experiments:
        methods: dict[str, list[Path]] = {}
        for run_dir in sorted((experiment / "runs").iterdir()):
            method = re.sub(r"_seed\d+$", "", run_dir.name)
            if re.fullmatch(args.methods, method) and (run_dir / "summary.json").exists():
                methods.setdefault(method, []).append(run_dir)
        for method, run_dirs in methods.items():
            before, after, accuracy = [], [], []
            for run_dir in run_dirs:
                summary = json.loads((run_dir / "summary.json").read_text())
                if "curated" not in summary.get("estimate", {}):
                    continue  # no audit: nothing to cover
                before.append(curated_interval(summary))
                now = recurate(run_dir, args.out / experiment.name / run_dir.name)
                after.append(curated_interval(now))
                accuracy.append(now["curated_label_acc"])
            if not before:
                continue
            (held_then, width_then), (held_now, width_now) = np.mean(before, axis=0), np.mean(after, axis=0)
            print(f"| {experiment.name} | {method} | {len(before)} | {100 * np.mean(accuracy):.1f} "
                  f"| {round(held_then * len(before))}/{len(before)} / {round(held_now * len(after))}/{len(after)} "
                  f"| {100 * width_then:.1f} / {100 * width_now:.1f} |", flush=True)


if __name__ == "__main__":
    main()
