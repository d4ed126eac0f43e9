"""`ray job submit -- python ray_jobs/label.py --config configs/demo_judge.yaml --output OUT`: the LLM judge labels
pairs (``--input`` Parquet, or the config's ``data.path``); writes pairs + ``label, confidence`` as Parquet.

The judge's API key is read from the variable named by ``judge.api_key_env`` in the cluster's environment.
"""
import _stage
import ray.data

from rlthf import pipeline
from rlthf.config import load_config


def main() -> None:
    p = _stage.parser(__doc__.splitlines()[0])
    p.add_argument("--input", help="pairs as Parquet (path or URI); default: the config's data.path")
    p.add_argument("--output", required=True, help="Parquet directory (path or URI) for the labelled pairs")
    p.add_argument("--cache", required=True, help="verdict cache: a folder of Parquet parts on a shared path or URI; reruns reuse it")
    p.add_argument("--report", help="also write the judge report here (JSON)")
    args = p.parse_args()
    config = load_config(args.config, args.overrides)
    pipeline.init_ray_default()
    pairs = ray.data.read_parquet(args.input) if args.input else pipeline.load_pairs(
        config.data.path, format=config.data.format, seed=config.seed, max_pairs=config.data.max_pairs)
    pipeline.label(pairs, config.judge, cache_path=args.cache, report_path=args.report).write_parquet(args.output)


if __name__ == "__main__":
    _stage.run_stage(main)
