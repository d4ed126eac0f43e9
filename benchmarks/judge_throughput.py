"""Throughput and accuracy of the transformers judge (SmolLM2-135M-Instruct GGUF) in logprob and generate mode.

Judges the first N real HH-RLHF pairs (one order: Response A = response_a) in-process, without Ray, so that the
numbers measure the model and not the scheduling, and prints one row per mode: seconds, pairs per second,
parse failures, accuracy against the human labels, and how often the two modes agree.

    python benchmarks/judge_throughput.py --pairs 64
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from rlthf.config import JudgeConfig
from rlthf.data import read_pairs
from rlthf.judges.prompts import render_requests
from rlthf.judges.transformers_backend import TransformersJudge

DATA = Path(os.environ.get("RLTHF_HH_RLHF", Path(__file__).resolve().parents[2]
                           / "shared/data/hh-rlhf/harmless-base/test.jsonl.gz"))


def judge_all(judge: TransformersJudge, requests: dict[str, np.ndarray], batch_size: int) -> tuple[dict, float]:
    """Verdicts for all requests, batch by batch, and the seconds it took."""
    n = len(requests["key"])
    start = time.perf_counter()
    parts = [judge({c: v[i:i + batch_size] for c, v in requests.items()}) for i in range(0, n, batch_size)]
    seconds = time.perf_counter() - start
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=64, help="HH-RLHF pairs to judge (the file's first N)")
    parser.add_argument("--batch-size", type=int, default=8, help="requests per forward pass / generate call")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generate mode: new tokens")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (judge.cpus_per_actor); more than the idle cores slows it down")
    parser.add_argument("--gpu", action="store_true", help="run on CUDA when available")
    parser.add_argument("--data", default=str(DATA), help="HH-RLHF jsonl(.gz)")
    args = parser.parse_args(argv)

    pairs, _ = read_pairs(args.data, max_pairs=args.pairs)
    config = JudgeConfig(backend="transformers", mode="logprob", both_orders=False, batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens, cpus_per_actor=args.threads,
                         gpus_per_actor=1.0 if args.gpu else 0.0)
    requests = render_requests(pairs, config)
    human = np.array([str(label).upper() if label is not None else "" for label in pairs["human_label"]])

    start = time.perf_counter()
    judge = TransformersJudge(config)
    load_seconds = time.perf_counter() - start
    judge({c: v[:1] for c, v in requests.items()})  # warm-up, not timed

    results = {}
    for mode in ("logprob", "generate"):
        moded = copy.copy(judge)  # shares the loaded model; the mode is read from the config per batch
        moded.config = dataclasses.replace(config, mode=mode)
        results[mode] = judge_all(moded, requests, args.batch_size)

    labelled = human != ""
    answers = {mode: verdicts["preference"] for mode, (verdicts, _) in results.items()}
    both = (answers["logprob"] != "") & (answers["generate"] != "")
    agreement = float(np.mean(answers["logprob"][both] == answers["generate"][both])) if both.any() else float("nan")

    print(f"SmolLM2-135M-Instruct Q4_1 (transformers {_version('transformers')}, torch {_version('torch')}), "
          f"device {judge.device}, {args.threads} thread(s), batch {args.batch_size}, load {load_seconds:.1f} s, "
          f"prompt tokens mean {results['logprob'][0]['prompt_tokens'].mean():.0f}")
    header = f"{'mode':<9} {'pairs':>5} {'seconds':>8} {'pairs/s':>8} {'parse fail':>10} {'accuracy':>9} " \
             f"{'acc (answered)':>14} {'mean new tok':>12}"
    print(header)
    print("-" * len(header))
    for mode, (verdicts, seconds) in results.items():
        answered = (verdicts["preference"] != "") & labelled
        correct = (verdicts["preference"] == human) & answered
        accuracy = correct.sum() / max(labelled.sum(), 1)
        accuracy_answered = correct.sum() / answered.sum() if answered.any() else float("nan")
        print(f"{mode:<9} {len(verdicts['key']):>5} {seconds:>8.1f} {len(verdicts['key']) / seconds:>8.2f} "
              f"{int((verdicts['preference'] == '').sum()):>10} {accuracy:>9.3f} {accuracy_answered:>14.3f} "
              f"{verdicts['completion_tokens'].mean():>12.1f}")
    print(f"agreement logprob vs generate: {agreement:.3f} over {int(both.sum())} pairs both answered")
    print(f"share of 'A' answers: logprob {np.mean(answers['logprob'] == 'A'):.3f}, "
          f"generate {np.mean(answers['generate'] == 'A'):.3f}; human label a: {np.mean(human == 'A'):.3f}")
    print(f"first generated answer: {results['generate'][0]['raw'][0]!r}")


def _version(module: str) -> str:
    import importlib

    return getattr(importlib.import_module(module), "__version__", "?")


if __name__ == "__main__":
    main()
