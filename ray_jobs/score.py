"""`ray job submit -- python ray_jobs/score.py --config C --checkpoint CKPT --input PAIRS --output OUT`: rewards of
both responses of every pair (Ray Data actors); writes the pairs with ``reward_a, reward_b`` as Parquet."""
import _stage
import ray.data

from rlthf import pipeline
from rlthf.config import load_config


def main() -> None:
    p = _stage.parser(__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder written by train_rm.py")
    p.add_argument("--input", required=True, help="pairs as Parquet (path or URI)")
    p.add_argument("--output", required=True, help="Parquet directory (path or URI) for the scored pairs")
    args = p.parse_args()
    config = load_config(args.config, args.overrides)
    pipeline.init_ray_default()
    pairs = ray.data.read_parquet(args.input)
    scores = pipeline.score(pairs, args.checkpoint, config.reward, cache_dir=config.reward.cache_dir)
    pipeline.attach_rewards(pairs, scores).write_parquet(args.output)


if __name__ == "__main__":
    _stage.run_stage(main)
