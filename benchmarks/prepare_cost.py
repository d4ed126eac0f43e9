"""What the ``prepare`` step costs the driver: seconds and peak resident memory, in a fresh process.

``prepare`` reads the data file, writes the texts to ``data/texts.parquet`` and keeps the pairs' index; it is
the first step of every run and the one whose memory grows with the corpus before anything else runs. For each
config, a new run directory under ``--out`` (removed first), ``prepare`` alone, and a markdown table: pairs, seconds,
the step's recorded peak and the process's (``ru_maxrss``: the same here, as nothing ran before it).

    python benchmarks/scale.py --pairs 1000000 --out runs/scale      # writes runs/scale/config_1000000.yaml
    python benchmarks/prepare_cost.py runs/scale/config_1000000.yaml --out runs/prepare_cost
"""
from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

from rlthf.config import load_config
from rlthf.run.steps import cache_location, prepare
from rlthf.rundir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a run config (its output_dir is replaced by one under --out)")
    parser.add_argument("--out", default="runs/prepare_cost")
    args = parser.parse_args()
    out = Path(args.out) / "run"
    shutil.rmtree(out, ignore_errors=True)
    config = load_config(args.config, [f"output_dir={out}"])
    rd = RunDir(out)
    started = time.perf_counter()
    pairs = prepare(rd, config, cache_location(rd, config))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| pairs | seconds | step peak RSS | process peak RSS |\n|---:|---:|---:|---:|")
    print(f"| {len(pairs):,} | {seconds:.1f} | {rd.info('prepare')['driver_peak_rss_mib']:.0f} MiB | {peak:.0f} MiB |")


if __name__ == "__main__":
    main()
