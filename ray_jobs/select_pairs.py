"""`ray job submit -- python ray_jobs/select_pairs.py --config C --input SCORED --iteration K --output OUT`: one RLTHF
selection on scored, labelled pairs; writes them with ``flip, annotate, train_copies`` and prints the curve."""
import json

import _stage
import ray.data

from rlthf import pipeline
from rlthf.config import load_config


def main() -> None:
    p = _stage.parser(__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="pairs with id, label, reward_a, reward_b as Parquet")
    p.add_argument("--iteration", type=int, default=1, help="RLTHF iteration (picks alpha and beta)")
    p.add_argument("--output", required=True, help="Parquet directory (path or URI) for the selection")
    args = p.parse_args()
    config = load_config(args.config, args.overrides)
    pipeline.init_ray_default()
    scored = ray.data.read_parquet(args.input)
    print(json.dumps(pipeline.analyze(scored, config.selection).summary()))
    pipeline.select(scored, config.selection, iteration=args.iteration).write_parquet(args.output)


if __name__ == "__main__":
    _stage.run_stage(main)
