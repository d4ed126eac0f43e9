"""Ray's overhead and scaling for LoRA reward scoring and training: Ray with 1 and 2 workers against a plain loop.

The same work three ways, on the first N real HH-RLHF pairs (human labels) and the MiniLM backbone:

- plain: one process, no Ray: :class:`LoraScorer` on batches; the training worker's own epoch and evaluation
  helpers (``_train_epoch``, ``evaluate``) with the adapter saved each epoch, as Ray Train's rank 0 does;
- ray x1, ray x2: ``LoraReward.score`` (Ray Data actors, ``reward.score_concurrency``) and ``LoraReward.train``
  (Ray Train ``TorchTrainer``, DDP over ``reward.num_workers``), one CPU and one torch thread per worker.

Every timing includes loading the model (each actor and each worker loads its own), as a real run pays it.
Prints a markdown table (seconds, pairs/s, time relative to plain), a row as each finishes, and writes the raw
numbers as JSON after each row. ``--stages train`` or ``score`` runs one half.

    python benchmarks/scaling.py --pairs 128 --score-pairs 1024 --out runs/scaling
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from rlthf.config import RayConfig, RewardConfig
from rlthf.data import read_pairs
from rlthf.cluster.session import init_ray
from rlthf.models import resolve_model
from rlthf.reward.common import validation_mask
from rlthf.reward.lora import (
    LoraReward,
    LoraScorer,
    _train_epoch,
    evaluate,
    load_base_model,
    load_tokenizer,
    new_lora_model,
)

DATA = Path(os.environ.get("RLTHF_HH_RLHF", Path(__file__).resolve().parents[2]
                           / "shared/data/hh-rlhf/harmless-base/test.jsonl.gz"))
COLUMNS = ["id", "prompt", "response_a", "response_b", "label"]


def plain_score(checkpoint: Path, pairs: pd.DataFrame, batch_size: int) -> float:
    start = time.perf_counter()
    scorer = LoraScorer(str(checkpoint), num_threads=1)
    for i in range(0, len(pairs), batch_size):
        scorer({c: pairs[c].to_numpy()[i:i + batch_size] for c in COLUMNS[:4]})
    return time.perf_counter() - start


def ray_score(config: RewardConfig, checkpoint: Path, pairs: pd.DataFrame) -> float:
    import ray.data

    dataset = ray.data.from_pandas(pairs[COLUMNS[:4]])
    start = time.perf_counter()
    scored = LoraReward(config).score(dataset, checkpoint).materialize()
    seconds = time.perf_counter() - start
    assert scored.count() == len(pairs)
    return seconds


def plain_train(config: RewardConfig, pairs: pd.DataFrame, seed: int) -> float:
    """What one Ray Train worker runs, in this process: same batches, epochs, evaluation and per-epoch save."""
    import torch

    start = time.perf_counter()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    is_val = validation_mask(pairs["id"], config.val_fraction, seed)
    train, val = pairs[~is_val], pairs[is_val]
    tokenizer = load_tokenizer(resolve_model(config.model))
    model = new_lora_model(load_base_model(resolve_model(config.model), tokenizer), r=config.lora_r,
                           alpha=config.lora_alpha, dropout=config.lora_dropout,
                           target_modules=config.lora_target_modules)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # the schedule costs nothing
    loop = {"max_length": config.max_length}

    def batches(frame: pd.DataFrame, size: int):
        for i in range(0, len(frame), size):
            yield {c: frame[c].to_numpy()[i:i + size] for c in COLUMNS}

    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(config.epochs):
            _train_epoch(model, None, optimizer, scheduler, tokenizer, batches(train, config.batch_size), loop, None)
            evaluate(model, tokenizer, batches(val, config.score_batch_size), config.max_length)
            model.save_pretrained(tmp)
    return time.perf_counter() - start


def ray_train(config: RewardConfig, pairs: pd.DataFrame, out_dir: Path, seed: int) -> float:
    import ray.data

    start = time.perf_counter()
    LoraReward(config).train(ray.data.from_pandas(pairs[COLUMNS]), out_dir, seed=seed)
    return time.perf_counter() - start


def row(stage: str, how: str, seconds: float, pairs: int, plain: float) -> dict:
    return {"stage": stage, "how": how, "seconds": round(seconds, 2), "pairs_per_s": round(pairs / seconds, 1),
            "vs_plain": round(seconds / plain, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=128, help="HH-RLHF pairs to train on (the file's first N)")
    parser.add_argument("--score-pairs", type=int, default=1024,
                        help="pairs to score: enough that model loading (once per actor) is not all there is")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per text")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="runs/scaling", help="folder for scaling.json")
    parser.add_argument("--stages", nargs="+", choices=("train", "score"), default=["train", "score"])
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    frame, _ = read_pairs(DATA, max_pairs=max(args.pairs, args.score_pairs), seed=0)
    everything = frame.assign(label=frame["human_label"])[COLUMNS].astype(str)
    pairs, to_score = everything.iloc[:args.pairs], everything.iloc[:args.score_pairs]
    # 3 logical CPUs on 2 cores: two scoring actors plus the one CPU Ray Data's feeding tasks need (ray#44687).
    init_ray(RayConfig(num_cpus=3))
    base = RewardConfig(backend="lora", max_length=args.max_length, epochs=args.epochs, batch_size=16,
                        learning_rate=5e-4, cpus_per_worker=1, score_batch_size=32, max_failures=0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| stage | how | seconds | pairs/s | time vs plain |\n|---|---|---:|---:|---:|", flush=True)

    def record(stage: str, how: str, seconds: float, pairs: int, plain: float) -> None:
        # each row as it finishes: a long benchmark cut short still leaves what it measured
        r = row(stage, how, seconds, pairs, plain)
        rows.append(r)
        print(f"| {r['stage']} | {r['how']} | {r['seconds']} | {r['pairs_per_s']} | {r['vs_plain']} |", flush=True)
        (out / "scaling.json").write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(), "rows": rows},
                                                     indent=2))

    work = Path(tempfile.mkdtemp(prefix="rlthf-scaling-"))
    if "train" in args.stages:
        plain = plain_train(base, pairs, seed=0)
        record("train", "plain loop", plain, len(pairs) * args.epochs, plain)
        for workers in (1, 2):
            config = RewardConfig(**{**base.__dict__, "num_workers": workers})
            seconds = ray_train(config, pairs, work / f"rm_x{workers}", seed=0)
            record("train", f"ray x{workers}", seconds, len(pairs) * args.epochs, plain)
    if "score" in args.stages:
        checkpoint = work / "rm_x1"  # the model the scoring rows load
        if not checkpoint.exists():
            ray_train(base, pairs.iloc[:32], checkpoint, seed=0)  # scoring time does not depend on the training
        plain = plain_score(checkpoint, to_score, base.score_batch_size)
        record("score", "plain loop", plain, len(to_score), plain)
        for actors in (1, 2):
            config = RewardConfig(**{**base.__dict__, "score_concurrency": actors})
            record("score", f"ray x{actors}", ray_score(config, checkpoint, to_score), len(to_score), plain)

if __name__ == "__main__":
    main()
