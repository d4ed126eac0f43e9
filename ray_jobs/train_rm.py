"""`ray job submit -- python ray_jobs/train_rm.py --config configs/demo_lora.yaml --input LABELLED --output CKPT`:
a reward model (section ``reward``) on labelled pairs; lora trains on Ray Train with ``reward.max_failures``
restarts and its checkpoints under ``reward.storage_path``."""
import _stage
import ray.data

from rlthf import pipeline
from rlthf.config import load_config


def main() -> None:
    p = _stage.parser(__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="labelled pairs as Parquet (id, prompt, response_a, response_b, "
                                                   "label); rows without a label are left out")
    p.add_argument("--output", required=True, help="checkpoint folder (a path every node sees)")
    args = p.parse_args()
    config = load_config(args.config, args.overrides)
    pipeline.init_ray_default()
    pairs = ray.data.read_parquet(args.input).filter(lambda row: row["label"] in ("a", "b"))
    print(pipeline.train_reward_model(pairs, config.reward, args.output, seed=config.seed,
                                 cache_dir=config.reward.cache_dir))


if __name__ == "__main__":
    _stage.run_stage(main)
