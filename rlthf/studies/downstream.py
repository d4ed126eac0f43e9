"""The downstream table (paper 4.2, table 2): DPO policies trained on four label sets of one corpus, each judged
against the same reference policy on the same held-out prompts.

Label sets, each an ``rlthf run`` on the config's split, shard, simulated AI labels and seed (paper appendix C.3;
as in ``benchmarks/compare_baselines.py``), whose ``curated.parquet`` labels the whole corpus with that run's last
reward model, human labels kept:

- ``ai_only``: reward model 0, trained on the AI labels alone (no human label at all);
- ``random``: AI labels plus the same number of human labels as RLTHF, drawn at random;
- ``human``: every shard pair human-labelled;
- ``rlthf``: the config as it is.

Then for each: DPO (:func:`rlthf.dpo.train_dpo`, the same ``dpo`` settings and the same pairs by id), responses on
the held-out prompts, and the win rate against the reference (:mod:`rlthf.winrate`). Every stage's output is kept
under ``downstream.output``, so a rerun picks up where it stopped.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from rlthf.config import RLTHFConfig
from rlthf.settings import apply_override, from_dict
from rlthf.studies.baselines import BASELINE_NAMES, BASELINE_OVERRIDES

def method_config(config: RLTHFConfig, method: str, run_dir: Path) -> RLTHFConfig:
    raw = config.to_dict()
    for override in [*BASELINE_OVERRIDES[method], f"output_dir={run_dir}"]:
        apply_override(raw, override)
    return from_dict(RLTHFConfig, raw)


def run_downstream(config: RLTHFConfig, echo=print) -> pd.DataFrame:
    """`rlthf downstream`: the four-row win-rate table; also ``<out>/table.md`` and ``<out>/results.json``."""
    from rlthf.cluster.session import init_ray
    from rlthf.policy.generate import generate_responses, heldout_prompts
    from rlthf.rundir import atomic_write_json, atomic_write_text

    out = Path(config.downstream.output or Path(config.output_dir) / "downstream")
    init_ray(config.ray)
    started = time.perf_counter()
    prompts = heldout_prompts(config)
    reference = cached_frame(out / "responses_reference.parquet", lambda: generate_responses(
        prompts, config.dpo.model, config.dpo.gguf_file, config.winrate, seed=config.seed))
    echo(f"downstream: {len(prompts)} held-out prompts; reference {config.dpo.model} "
         f"({time.perf_counter() - started:.0f} s)")
    results = []
    for method in config.downstream.methods:
        row = method_row(config, method, out / method, prompts, reference)
        results.append(row)
        atomic_write_json(out / method / "result.json", row)
        echo(f"{BASELINE_NAMES[method]}: win rate {row['win_rate']:.1%} ({row['total_s']:.0f} s)")
    text = downstream_table(results, len(prompts))
    wall = time.perf_counter() - started
    atomic_write_text(out / "table.md", text + "\n")
    atomic_write_json(out / "results.json", {"rows": results, "wall_s": wall, "prompts": len(prompts),
                                             "config": config.to_dict()})
    echo("\n" + text + f"\n\nwin rate against {config.dpo.model} on {len(prompts)} held-out prompts, judged by "
         f"{config.judge.model} ({config.judge.backend}, {config.judge.mode}) in both orders; {wall:.0f} s")
    return pd.DataFrame(results)


def cached_frame(path: Path, make) -> pd.DataFrame:
    """The frame at ``path``, made (and written atomically) the first time."""
    from rlthf.rundir import atomic_write_parquet

    if path.exists():
        return pd.read_parquet(path)
    frame = make()
    atomic_write_parquet(path, frame)
    return frame


def method_row(config: RLTHFConfig, method: str, method_dir: Path, prompts: pd.DataFrame,
               reference: pd.DataFrame) -> dict:
    """One label set: its RLTHF run, DPO on its curated pairs, the policy's answers and their win rate."""
    from rlthf.policy.dpo import read_preference_pairs, train_dpo
    from rlthf.policy.generate import generate_responses
    from rlthf.policy.winrate import evaluate, win_rate
    from rlthf.run.driver import run

    t0 = time.perf_counter()
    labelled = run(method_config(config, method, method_dir / "run"), echo=lambda _: None)
    pairs = read_preference_pairs(labelled.curated_path, config.dpo.max_pairs, config.seed)
    dpo = train_dpo(pairs, config.dpo, method_dir / "dpo", seed=config.seed)
    t_dpo = time.perf_counter()
    responses = cached_frame(method_dir / "responses_policy.parquet", lambda: generate_responses(
        prompts, dpo["policy"], None, config.winrate, seed=config.seed))
    verdicts = cached_frame(method_dir / "verdicts.parquet",
                            lambda: evaluate(prompts, responses, reference, config)[1])
    result = win_rate(verdicts)
    corpus_rm = corpus_reward_accuracy(config, labelled.run_dir, method_dir / "corpus_rm")
    # how many answers DPO changed at all: identical answers can only tie, whatever the judge
    reference_answer = dict(zip(reference["prompt_id"], reference["response"]))
    changed = sum(r != reference_answer[p] for p, r in zip(responses["prompt_id"], responses["response"]))
    return {"method": BASELINE_NAMES[method], **result, "human_pct_corpus": labelled.summary["human_pct_corpus"],
            "curated_label_acc": labelled.summary["curated_label_acc"], **corpus_rm,
            "answers_changed": int(changed), "dpo_pairs": dpo["pairs"], "dpo_steps": dpo["steps"],
            "dpo_last_loss": dpo["last_loss"], "dpo_s": round(t_dpo - t0, 1),
            "total_s": round(time.perf_counter() - t0, 1)}


def downstream_table(results: list[dict], prompts: int) -> str:
    """The paper's table 2 as markdown, with the curated and corpus-RM accuracies beside the win rate."""
    from rlthf.policy.winrate import TABLE_HEADER, format_row

    table = TABLE_HEADER.replace("| policy |", "| DPO on | human % corpus | curated label acc | corpus RM test acc "
                                              "| answers changed |")
    lines = [table.replace("|---|", "|---|---|---|---|---|", 1)]
    for row in results:
        cells = format_row(row["method"], row).split(" | ", 1)
        lines.append(f"{cells[0]} | {row['human_pct_corpus']:.2f} | {row['curated_label_acc']:.1%} | "
                     f"{row['corpus_rm_test_acc']:.1%} | {row['answers_changed']}/{prompts} | {cells[1]}")
    return "\n".join(lines)


def corpus_reward_accuracy(config: RLTHFConfig, run_dir: Path, out_dir: Path) -> dict:
    """Paper 4.1.1: a reward model retrained on the run's fully labelled corpus (curated.parquet), and its accuracy
    on the run's held-out test pairs against the ground truth, with a Wilson interval."""
    import ray

    from rlthf.run.steps import score_frame
    from rlthf.rundir import RunDir
    from rlthf.reward.backends import make_reward_backend
    from rlthf.core.metrics import preference_accuracy, wilson_interval
    from rlthf.reward.common import CHECKPOINT_META

    curated = pd.read_parquet(run_dir / "curated.parquet")
    pairs = pd.read_parquet(run_dir / "data" / "pairs.parquet")
    test = pairs[pairs["split"] == "test"].reset_index(drop=True)
    backend = make_reward_backend(config.reward, config.reward.cache_dir or str(run_dir / "cache"))
    if not (out_dir / CHECKPOINT_META).exists():
        train = pd.DataFrame({"id": curated["id"], "prompt": curated["prompt"], "response_a": curated["chosen"],
                              "response_b": curated["rejected"], "label": "a"})
        backend.train(ray.data.from_pandas(train), out_dir, seed=config.seed)
    scores = score_frame(RunDir(run_dir), backend, out_dir, test)
    accuracy = preference_accuracy(scores["reward_a"], scores["reward_b"], test["truth"])
    return {"corpus_rm_test_acc": accuracy, "corpus_rm_test_ci": list(wilson_interval(accuracy * len(test), len(test))),
            "corpus_rm_test_pairs": len(test)}
