"""Entry point for `ray job submit -- python ray_jobs/tune_schedules.py --config configs/tune_demo.yaml`.

It parses the arguments and calls the library (``rlthf tune``), nothing more; inside a Ray job RAY_ADDRESS is
set, so the sweep's trials spread over the cluster. On more than one node, point ``output_dir`` and the base
config's ``reward.cache_dir`` at storage every node sees.
"""
import sys

from rlthf.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
