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

from rlthf.config import RLTHFConfig, _apply_override, from_dict

# config overrides per label set, on top of the user's config
METHOD_OVERRIDES = {
    "ai_only": ["selection.iterations=0", "annotation.eyes_off_min=0", "annotation.eyes_off_fraction=0"],
    "random": ["selection.selector=random"],
    "human": ["selection.selector=random", "selection.iterations=1", "selection.annotation_fraction=1.0",
              "annotation.eyes_off_min=0", "annotation.eyes_off_fraction=0"],
    "rlthf": [],
}
METHOD_NAMES = {"ai_only": "AI-only", "random": "Random", "human": "Human", "rlthf": "RLTHF"}


def method_config(config: RLTHFConfig, method: str, run_dir: Path) -> RLTHFConfig:
    raw = config.to_dict()
    for override in [*METHOD_OVERRIDES[method], f"output_dir={run_dir}"]:
        _apply_override(raw, override)
    return from_dict(RLTHFConfig, raw)


def run_downstream(config: RLTHFConfig, echo=print) -> pd.DataFrame:
    """`rlthf downstream`: the four-row win-rate table; also ``<out>/table.md`` and ``<out>/results.json``."""
    from rlthf.dpo import read_preference_pairs, train_dpo
    from rlthf.loop import init_ray, run
    from rlthf.rundir import atomic_write_json, atomic_write_parquet, atomic_write_text
    from rlthf.winrate import (TABLE_HEADER, evaluate, format_row, generate_responses, heldout_prompts,
                               win_rate)

    out = Path(config.downstream.output or Path(config.output_dir) / "downstream")
    init_ray(config.ray)
    started = time.perf_counter()
    prompts = heldout_prompts(config)
    reference_path = out / "responses_reference.parquet"
    if reference_path.exists():
        reference = pd.read_parquet(reference_path)
    else:
        reference = generate_responses(prompts, config.dpo.model, config.dpo.gguf_file, config.winrate,
                                       seed=config.seed)
        atomic_write_parquet(reference_path, reference)
    echo(f"downstream: {len(prompts)} held-out prompts; reference {config.dpo.model} "
         f"({time.perf_counter() - started:.0f} s)")

    results = []
    for method in config.downstream.methods:
        t0 = time.perf_counter()
        method_dir = out / method
        labelled = run(method_config(config, method, method_dir / "run"), echo=lambda _: None)
        pairs = read_preference_pairs(labelled.curated_path, config.dpo.max_pairs, config.seed)
        dpo = train_dpo(pairs, config.dpo, method_dir / "dpo", seed=config.seed)
        t_dpo = time.perf_counter()
        responses_path = method_dir / "responses_policy.parquet"
        if responses_path.exists():
            responses = pd.read_parquet(responses_path)
        else:
            responses = generate_responses(prompts, dpo["policy"], None, config.winrate, seed=config.seed)
            atomic_write_parquet(responses_path, responses)
        verdicts_path = method_dir / "verdicts.parquet"
        if verdicts_path.exists():
            verdicts = pd.read_parquet(verdicts_path)
            result = win_rate(verdicts)
        else:
            result, verdicts = evaluate(prompts, responses, reference, config)
            atomic_write_parquet(verdicts_path, verdicts)
        corpus_rm = corpus_reward_accuracy(config, labelled.run_dir, method_dir / "corpus_rm")
        # how many answers DPO changed at all: identical answers can only tie, whatever the judge
        reference_answer = dict(zip(reference["prompt_id"], reference["response"]))
        changed = sum(r != reference_answer[p] for p, r in zip(responses["prompt_id"], responses["response"]))
        row = {"method": METHOD_NAMES[method], **result,
               "human_pct_corpus": labelled.summary["human_pct_corpus"],
               "curated_label_acc": labelled.summary["curated_label_acc"], **corpus_rm,
               "answers_changed": int(changed), "dpo_pairs": dpo["pairs"], "dpo_steps": dpo["steps"], "dpo_last_loss": dpo["last_loss"],
               "dpo_s": round(t_dpo - t0, 1), "total_s": round(time.perf_counter() - t0, 1)}
        results.append(row)
        atomic_write_json(method_dir / "result.json", row)
        echo(f"{METHOD_NAMES[method]}: win rate {result['win_rate']:.1%} ({row['total_s']:.0f} s)")

    table = TABLE_HEADER.replace("| policy |", "| DPO on | human % corpus | curated label acc | corpus RM test acc "
                                              "| answers changed |")
    lines = [table.replace("|---|", "|---|---|---|---|---|", 1)]
    for row in results:
        cells = format_row(row["method"], row).split(" | ", 1)
        lines.append(f"{cells[0]} | {row['human_pct_corpus']:.2f} | {row['curated_label_acc']:.1%} | "
                     f"{row['corpus_rm_test_acc']:.1%} | {row['answers_changed']}/{len(prompts)} | {cells[1]}")
    text = "\n".join(lines)
    wall = time.perf_counter() - started
    atomic_write_text(out / "table.md", text + "\n")
    atomic_write_json(out / "results.json", {"rows": results, "wall_s": wall, "prompts": len(prompts),
                                             "config": config.to_dict()})
    echo("\n" + text + f"\n\nwin rate against {config.dpo.model} on {len(prompts)} held-out prompts, judged by "
         f"{config.judge.model} ({config.judge.backend}, {config.judge.mode}) in both orders; {wall:.0f} s")
    return pd.DataFrame(results)


def corpus_reward_accuracy(config: RLTHFConfig, run_dir: Path, out_dir: Path) -> dict:
    """Paper 4.1.1: a reward model retrained on the run's fully labelled corpus (curated.parquet), and its accuracy
    on the run's held-out test pairs against the ground truth, with a Wilson interval."""
    import ray

    from rlthf.loop import _score, make_reward_backend
    from rlthf.metrics import preference_accuracy, wilson_interval
    from rlthf.reward.common import CHECKPOINT_META

    curated = pd.read_parquet(run_dir / "curated.parquet")
    pairs = pd.read_parquet(run_dir / "data" / "pairs.parquet")
    test = pairs[pairs["split"] == "test"].reset_index(drop=True)
    backend = make_reward_backend(config.reward, config.reward.cache_dir or str(run_dir / "cache"))
    if not (out_dir / CHECKPOINT_META).exists():
        train = pd.DataFrame({"id": curated["id"], "prompt": curated["prompt"], "response_a": curated["chosen"],
                              "response_b": curated["rejected"], "label": "a"})
        backend.train(ray.data.from_pandas(train), out_dir, seed=config.seed)
    scores = _score(backend, out_dir, test)
    accuracy = preference_accuracy(scores["reward_a"], scores["reward_b"], test["truth"])
    return {"corpus_rm_test_acc": accuracy, "corpus_rm_test_ci": list(wilson_interval(accuracy * len(test), len(test))),
            "corpus_rm_test_pairs": len(test)}
