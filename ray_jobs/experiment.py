"""Entry point for `ray job submit -- python ray_jobs/experiment.py --config configs/experiment_hh_rlhf.yaml`.

It parses the arguments and calls the library (``rlthf experiment``), nothing more; inside a Ray job
RAY_ADDRESS is set, so every run joins the cluster instead of starting a local Ray.
"""
import sys

from rlthf.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
