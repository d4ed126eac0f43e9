"""What labeling with an LLM judge costs the driver when the verdict cache already holds every verdict (a rerun,
or a run resumed after the judge was paid): seconds and peak resident memory of the ``judge`` step alone.

For a run config (one of ``benchmarks/scale.py``'s), a run directory under ``--out``: ``prepare`` and a verdict
for every shard pair in both orders (seeded random "A"/"B", a short rationale) written to the cache in one
process, then the ``judge`` step alone in a fresh one (its ``ru_maxrss`` is the driver's peak; Ray's workers are
other processes; the table gives its peak before the step too: the run's index, read by ``prepare``). The judge
is an OpenAI-compatible endpoint at an address where nothing listens: a request the cache did not serve fails at
once, a transient failure (``--missing`` leaves a share of the verdicts out on purpose, to time the asking path:
requests rendered, anti-joined, sent by the actor pool, their failures written and counted); the table says how
many were asked. Code before the Parquet cache kept it as ``judge/verdicts.jsonl``; ``--jsonl`` writes the
verdicts there, for that code on ``PYTHONPATH``.

    python benchmarks/scale.py --pairs 100000 1000000 --out runs/scale
    python benchmarks/judge_cost.py runs/scale/config_100000.yaml runs/scale/config_1000000.yaml --out runs/judge_cost
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

JUDGE = ["ai_labels.source=judge", "judge.backend=openai", "judge.model=bench-judge",
         "judge.base_url=http://127.0.0.1:9/v1", "judge.both_orders=true", "judge.max_retries=0",
         "judge.api_key_env=RLTHF_BENCH_JUDGE_KEY"]
PART_ROWS = 100_000


def load(config_path: str, run_dir: Path):
    from rlthf.config import load_config
    from rlthf.rundir import RunDir
    from rlthf.run.steps import cache_location, prepare

    config = load_config(config_path, [f"output_dir={run_dir}", *JUDGE])
    rd = RunDir(run_dir)
    pairs = prepare(rd, config, cache_location(rd, config))
    shard = pairs[(pairs["split"] == "train") & pairs["in_shard"]].reset_index(drop=True)
    return config, rd, shard


def verdicts(shard: pd.DataFrame, config, order: str, rng: np.random.Generator) -> pd.DataFrame:
    # (keys made with what the code before the Parquet cache has too, so --jsonl runs with it)
    from rlthf.judges.cache import cache_key
    from rlthf.judges.labeling import judge_params
    from rlthf.judges.prompts import template_hash

    template, params = template_hash(config.judge), judge_params(config.judge)
    ids = shard["id"].astype(str).tolist()
    preference = np.where(rng.random(len(ids)) < 0.5, "A", "B")
    return pd.DataFrame({
        "cache_key": [cache_key(i, order, config.judge.model, template, params) for i in ids],
        "key": [f"{i}|{order}" for i in ids], "pair_id": ids, "order": order, "preference": preference,
        "raw": [f'rationale: the better answer.\npreference: "Response {p}"' for p in preference],
        "logprob_a": np.nan, "logprob_b": np.nan, "prompt_tokens": 700, "completion_tokens": 12, "error": "",
        "retryable": False, "model": config.judge.model, "template_hash": template,
        "time": "2026-01-01T00:00:00+00:00"})


def fill(config_path: str, run_dir: Path, jsonl: bool, missing: float) -> None:
    config, rd, shard = load(config_path, run_dir)
    rng, left_out = np.random.default_rng(0), np.random.default_rng(1)
    for order in ("ab", "ba"):
        records = verdicts(shard, config, order, rng)
        records = records[left_out.random(len(records)) >= missing]
        if jsonl:
            with open(rd.path("judge", "verdicts.jsonl"), "a") as out:
                for record in records.to_dict("records"):
                    out.write(json.dumps(record) + "\n")
            continue
        from rlthf.judges.cache import VerdictCache

        cache = VerdictCache(rd.shared("judge", "verdicts"))
        for start in range(0, len(records), PART_ROWS):
            cache.add(records.iloc[start:start + PART_ROWS])


def judge(config_path: str, run_dir: Path) -> None:
    from rlthf.run.steps import judge_step

    config, rd, shard = load(config_path, run_dir)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    labels = judge_step(rd, config, shard)
    report = json.loads(rd.path("judge", "report.json").read_text())
    print(json.dumps({"shard": len(shard), "labelled": int(labels["label"].notna().sum()),
                      "asked": report["asked"], "from_cache": report["from_cache"],
                      "seconds": time.perf_counter() - started, "peak_before_mib": before}))


def child(phase: str, config_path: str, run_dir: Path, jsonl: bool, missing: float) -> tuple[dict | None, float]:
    """``phase`` in a fresh process: what it printed last (JSON) and its peak RSS in MiB."""
    command = [sys.executable, __file__, config_path, "--phase", phase, "--run-dir", str(run_dir),
               "--missing", str(missing)]
    command += ["--jsonl"] if jsonl else []
    printed, log = (run_dir.parent / f"{run_dir.name}_{phase}.{kind}" for kind in ("json", "log"))
    with open(printed, "w") as out, open(log, "w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{phase} on {config_path} exited with {os.waitstatus_to_exitcode(status)}; see {log}")
    lines = [line for line in printed.read_text().splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else None), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="run configs (their output_dir is replaced by one under --out)")
    parser.add_argument("--out", type=Path, default=Path("runs/judge_cost"))
    parser.add_argument("--jsonl", action="store_true", help="write the verdicts as judge/verdicts.jsonl")
    parser.add_argument("--missing", type=float, default=0.0,
                        help="leave this share of the verdicts out of the cache (seeded): the judge is asked for them, "
                             "and each fails at once (nothing listens), a transient failure")
    parser.add_argument("--phase", choices=["fill", "judge"], help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("RLTHF_BENCH_JUDGE_KEY", "no-key-needed")  # the actors read it; nothing listens anyway
    if args.phase == "fill":
        return fill(args.configs[0], args.run_dir, args.jsonl, args.missing)
    if args.phase == "judge":
        return judge(args.configs[0], args.run_dir)
    print("| config | shard pairs | verdicts cached | asked | labelled | judge step s | driver peak RSS: before the "
          "step (the run's index read) / in all |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for config_path in args.configs:
        run_dir = args.out / Path(config_path).stem
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        child("fill", config_path, run_dir, args.jsonl, args.missing)
        result, peak = child("judge", config_path, run_dir, args.jsonl, args.missing)
        print(f"| {Path(config_path).name} | {result['shard']:,} | {result['from_cache']:,} | {result['asked']} | "
              f"{result['labelled']:,} | {result['seconds']:.0f} | {result['peak_before_mib']:,.0f} / {peak:,.0f} MiB |",
              flush=True)


if __name__ == "__main__":
    main()
