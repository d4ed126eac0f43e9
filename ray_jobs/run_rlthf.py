"""Entry point for `ray job submit -- python ray_jobs/run_rlthf.py [--config configs/demo.yaml]` (without
``--config``: the embedded default, as `rlthf run`).

It parses the arguments and calls the library, nothing more; inside a Ray job, Ray is already reachable
(RAY_ADDRESS is set), so the run joins the cluster instead of starting a local Ray.
"""
import sys

from rlthf.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
