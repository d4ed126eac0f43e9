"""rlthf inside a larger Ray pipeline: read, filter, label with an LLM judge, train a reward model, score, write.

    python examples/ray_pipeline.py --config configs/demo_judge.yaml --max-pairs 64 --output runs/pipeline

Every step is a ``ray.data.Dataset`` in and out, so your own Ray Data stages go between rlthf's. The config gives
the judge (section ``judge``) and the reward model (section ``reward``); on a cluster submit this script with
`ray job submit --working-dir . -- python examples/ray_pipeline.py ...` and write ``--output`` to s3://, gs:// or a
shared path.
"""
from __future__ import annotations

import argparse

import rlthf
from rlthf.pipeline import init_ray_default


def with_prompt_chars(batch: dict) -> dict:
    """Your own pipeline stage: a feature the filter below reads."""
    batch["prompt_chars"] = [len(p) for p in batch["prompt"]]
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo_judge.yaml", help="judge and reward sections")
    parser.add_argument("--max-pairs", type=int, default=64, help="pairs to read from the config's data.path")
    parser.add_argument("--max-prompt-chars", type=int, default=1500, help="drop pairs with longer dialogues")
    parser.add_argument("--output", default="runs/pipeline", help="where the scored pairs go (path or URI)")
    args = parser.parse_args()
    config = rlthf.load_config(args.config)
    init_ray_default()  # joins RAY_ADDRESS inside `ray job submit`, else starts a local Ray

    # read and filter: plain Ray Data
    pairs = rlthf.load_pairs(config.data.path, max_pairs=args.max_pairs, seed=config.seed)
    pairs = pairs.map_batches(with_prompt_chars, batch_format="numpy")
    pairs = pairs.filter(lambda row: row["prompt_chars"] <= args.max_prompt_chars)

    # label: the LLM judge (its API key, if any, comes from the environment variable judge.api_key_env)
    labelled = rlthf.label(pairs, config.judge, cache_path=f"{args.output}/verdicts",
                           report_path=f"{args.output}/judge_report.json")
    confident = labelled.filter(lambda row: row["label"] in ("a", "b"))

    # train a reward model on the judge's labels, score every pair with it
    checkpoint = rlthf.train_reward_model(confident, config.reward, f"{args.output}/reward_model", seed=config.seed,
                                          cache_dir=config.reward.cache_dir)
    scored = rlthf.attach_rewards(labelled, rlthf.score(labelled, checkpoint, config.reward,
                                                        cache_dir=config.reward.cache_dir))

    # where the judge and the reward model disagree: the pairs RLTHF would send to humans first
    def disagreement(b: dict) -> dict:
        labelled_a = b["label"] == "a"
        return b | {"disagrees": (b["label"] != None) & ((b["reward_a"] > b["reward_b"]) != labelled_a)}  # noqa: E711

    scored = scored.map_batches(disagreement, batch_format="numpy")
    scored.write_parquet(f"{args.output}/scored")
    table = scored.to_pandas()
    print(f"{len(table)} pairs scored -> {args.output}/scored; the judge labelled {table['label'].notna().sum()}, "
          f"the reward model disagrees with {int(table['disagrees'].sum())} of them")


if __name__ == "__main__":
    main()
