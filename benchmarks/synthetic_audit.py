"""The audit and `curate.policy: auto` on a large synthetic corpus with a weak reward model, over seeds and budgets.

The corpus and the reward model are benchmarks/scale.py's: N HH-RLHF pairs made distinct by a tag, simulated AI
labels at 75% (uniform noise), the dataset's human labels as the truth, a randomly initialised 1 x 32 BERT as
the frozen backbone (a reward model near chance: worse than its AI labels). Everything else is the defaults
(the audit's 5% of the corpus inside the budget, `auto` curation), with scale.py's small scoring settings.
It writes that run config and an experiment config, then runs ``rlthf experiment``: AI-only, Random and RLTHF
at each budget for each seed. Its report (``<out>/experiment/report.md``) has, per budget, how often the audit's
interval held the true curated accuracy and how often the curated labels were at least as accurate as the AI
labels: the issue's third dataset, beside vicuna80-judged and HH-RLHF.

    python benchmarks/synthetic_audit.py --pairs 20000 --seeds 0 1 2 3 4 5 6 7 8 9 --budgets 10% 20% \\
        --out runs/synthetic_audit --methods AI-only "RLTHF @ 10%" "RLTHF @ 20%"
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import run_config, write_corpus, write_tiny_backbone  # noqa: E402 (benchmarks are scripts, not a package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--budgets", nargs="+", default=["10%", "20%"])
    parser.add_argument("--out", type=Path, default=Path("runs/synthetic_audit"))
    parser.add_argument("--methods", nargs="+", help="only these of the experiment's methods ('RLTHF @ 10%%', ...)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, backbone = out / f"corpus_{args.pairs}.jsonl.gz", out / "tiny-bert-1x32"
    if not data.exists():
        write_corpus(args.pairs, data)
    write_tiny_backbone(backbone, 1, 32)
    base = run_config(data, backbone, out / "run")
    base["annotation"] = {"annotator": "simulated"}  # the default audit (5% of the corpus) and no fixed budget
    base["reward"]["cache_dir"] = str(out / "cache")
    (out / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    experiment = {"base": str(out / "base.yaml"), "output_dir": str(out / "experiment"), "seeds": args.seeds,
                  "budgets": args.budgets, "budget_free": ["AI-only"],
                  "reference": {"ai_only": "AI-only", "random": "Random", "rlthf": "RLTHF"}, "methods": {}}
    (out / "experiment.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    methods = ["--methods", *args.methods] if args.methods else []
    raise SystemExit(subprocess.call([sys.executable, "-m", "rlthf.cli", "experiment", "--config",
                                      str(out / "experiment.yaml"), *methods]))


if __name__ == "__main__":
    main()
