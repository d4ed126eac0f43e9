"""Entry point for `ray job submit -- python ray_jobs/winrate.py --config configs/downstream.yaml` (`rlthf winrate`).

It parses the arguments and calls the library, nothing more; inside a Ray job RAY_ADDRESS is set, so the command
joins the cluster instead of starting a local Ray.
"""
import sys

from rlthf.cli import main

if __name__ == "__main__":
    sys.exit(main(["winrate", *sys.argv[1:]]))
