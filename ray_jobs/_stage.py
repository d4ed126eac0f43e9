"""What the single-stage `ray_jobs/` entry points share: a parser with ``--config``/``--set`` and where the stage
reads and writes. Inputs and outputs are Parquet paths or URIs (a local or shared path, ``s3://``, ``gs://``):
Ray Data reads and writes them through pyarrow filesystems, so each stage can run as its own `ray job submit`.
"""
from __future__ import annotations

import argparse
import sys


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set reward.epochs=3 (repeatable)")
    return p


def run_stage(main) -> None:
    """Exit 2 with the message on a bad config or input, as `rlthf` does; `ray job submit` then exits 1."""
    try:
        main()
    except (ValueError, FileNotFoundError) as err:  # ConfigError and bad records among them
        print(f"rlthf: error: {err}", file=sys.stderr)
        sys.exit(2)
