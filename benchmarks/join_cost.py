"""What a Ray Data hash join costs against the input's size: the reason ``encoder_head`` looks a few thousand
embeddings up in the driver and joins the cache in Ray Data only past ``LOCAL_PAIRS`` pairs.

For each N, a left table of N text hashes (with 800-character texts) is left-joined onto a cache of N/2 of them
(64-float vectors), as ``streamed_pair_embeddings`` joins one side, on a local Ray with two CPUs; the join is
timed to its last row, three times. Prints a markdown table.

    python benchmarks/join_cost.py --rows 4000 100000 1000000
"""
from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np
import pandas as pd


def tables(n: int, block: int = 50_000) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(n)]
    rng = np.random.default_rng(0)
    left = [pd.DataFrame({"text_hash": hashes[i:i + block], "text": "x" * 800}) for i in range(0, n, block)]
    right = [pd.DataFrame({"text_hash": hashes[i:i + block:2],
                           "embedding": list(rng.random((len(hashes[i:i + block:2]), 64), dtype=np.float32))})
             for i in range(0, n, block)]
    return left, right


def time_join(n: int, partitions: int) -> float:
    import ray

    left, right = tables(n)
    start = time.perf_counter()
    joined = ray.data.from_pandas(left).join(ray.data.from_pandas(right), join_type="left_outer",
                                             num_partitions=partitions, on=("text_hash",))
    rows = sum(b.num_rows for b in joined.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert rows == n
    return time.perf_counter() - start


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[4000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    print("| rows | partitions | seconds (each run) |\n|---:|---:|---|")
    for n in args.rows:
        partitions = max(2, -(-n // 100_000))  # as streamed_pair_embeddings sizes them
        seconds = [time_join(n, partitions) for _ in range(args.repeats)]
        print(f"| {n:,} | {partitions} | {', '.join(f'{s:.1f}' for s in seconds)} |", flush=True)


if __name__ == "__main__":
    main()
