"""The RLTHF driver: one linear loop, every step saved in the run directory so that a rerun resumes.

    prepare          load, split off the test set, draw the shard, fix the ground truth
    judge            an LLM judge labels the shard, when ai_labels.source is judge (3.1)
    iter_0/labels    initial AI labels on the shard (the judge's, or the simulated labeler's)
    iter_0/train     reward model 0 on all AI labels (3.2.3)
    iter_0/score     rewards on the shard and the test set
    iter_0/validate  pairs the AI left unlabelled take model 0's label; eyes-off validation (3.2.3)
    for k = 1..K:
      iter_k/select    curve of model k-1 under the working labels: elbow, knee, reflection; flips, batch (3.2.4)
      iter_k/annotate  humans label the batch; flips and answers give the working labels of iteration k
      iter_k/train     model k on humans x alpha + AI/flipped pairs left of (1 - beta) * knee (3.2.5)
      iter_k/score     rewards on the shard and the test set
    final/curate     the last model labels the whole corpus (humans kept): curated.parquet for DPO (3.3)

A step's outputs are written atomically before the step is marked done in ``steps.json``; a rerun with the same
run directory loads finished steps instead of recomputing them, so no human is asked twice for a pair.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import yaml

from rlthf.analysis import analyze_curve
from rlthf.annotators import Annotator, FileQueueAnnotator, SimulatedHuman, cap_to_budget
from rlthf.config import ConfigError, RayConfig, RewardConfig, RLTHFConfig, SelectionConfig
from rlthf.data import choose_shard, read_pairs, split_test
from rlthf.plots import plot_accuracy, plot_curve
from rlthf.metrics import format_table, label_accuracy, preference_accuracy, rm_labels, wilson_interval
from rlthf.rundir import RunDir, atomic_write_json, atomic_write_jsonl, atomic_write_parquet, atomic_write_text
from rlthf.selection import annotation_batch_size, schedule_value, select_pairs, select_random
from rlthf.simulation import flip_labels, hardness_scores, label_sign, paper_flipped_truth, simulate_ai_labels

log = logging.getLogger("rlthf")

PAIR_TEXT = ["id", "prompt", "response_a", "response_b"]
# Keys that may change between a run and its resumption: where Ray runs, how fast scoring goes, how far to go.
RESUMABLE_CHANGES = ("ray.", "output_dir", "selection.iterations", "reward.cache_dir", "reward.score_batch_size",
                     "reward.score_concurrency", "reward.num_workers", "reward.cpus_per_worker",
                     "reward.max_failures", "reward.storage_path", "storage_path",
                     "dpo.", "winrate.", "downstream.")  # downstream stages read the run, they do not change it


@dataclass
class RunResult:
    run_dir: Path
    metrics: list[dict]
    curated_path: Path
    summary: dict


def init_ray(config: RayConfig) -> None:
    """Start a local Ray (or join ``address``), unless the caller's pipeline already did."""
    import ray

    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
    local = {} if address else {"num_cpus": config.num_cpus, "include_dashboard": False}
    ray.init(address=address, logging_level=logging.WARNING, **local)
    ctx = ray.data.DataContext.get_current()  # importing ray.data configures its loggers: quieten them after
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per dataset execution drowns the table


def make_reward_backend(config: RewardConfig, cache_dir: str | Path):
    if config.backend == "encoder_head":
        from rlthf.reward.encoder_head import EncoderHeadReward

        return EncoderHeadReward(config, cache_dir)
    from rlthf.reward.lora import LoraReward

    return LoraReward(config)


SIMULATION_MAX_LENGTH = 256  # fixed, so every reward backend is measured against the same ground truth


def simulation_reward_config(model: str) -> RewardConfig:
    """The frozen-encoder head behind the simulated labeler's hardness and the paper's flipped ground truth."""
    return RewardConfig(backend="encoder_head", model=model, max_length=SIMULATION_MAX_LENGTH)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "deepspeed":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_resume_config(rd: RunDir, config: RLTHFConfig) -> None:
    saved_path = rd.root / "config.yaml"
    current = config.to_dict()
    if saved_path.exists() and rd.steps:  # before any finished step, a corrected config is welcome
        # a key the saved config lacks (added by a later rlthf) counts as its default
        saved = _flatten(RLTHFConfig().to_dict()) | _flatten(yaml.safe_load(saved_path.read_text()))
        for key, value in _flatten(current).items():
            if saved.get(key) != value and not key.startswith(RESUMABLE_CHANGES):
                raise ConfigError(f"{key}: this run directory ({rd.root}) was started with {saved.get(key)!r}, the "
                                  f"config now says {value!r}; use a new output_dir to run with other settings")
    atomic_write_text(saved_path, yaml.safe_dump(current, sort_keys=False))


class _Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def run(config: RLTHFConfig, *, annotator: Optional[Annotator] = None,
        echo: Callable[[str], None] = print,
        on_iteration: Optional[Callable[[dict], None]] = None) -> RunResult:
    """Run (or resume) RLTHF as the config says; returns the metrics rows and the curated dataset's path.
    ``on_iteration`` gets every iteration's metrics row as soon as it is written (a Tune trial reports it)."""
    rd = RunDir(config.output_dir, mirror=config.storage_path)
    _check_resume_config(rd, config)
    cache_dir = config.reward.cache_dir or str(rd.root / "cache")
    pairs = prepare(rd, config, cache_dir)  # bad data fails here, before Ray starts
    init_ray(config.ray)
    backend = make_reward_backend(config.reward, cache_dir)
    shard = pairs[pairs["in_shard"]].reset_index(drop=True)
    test = pairs[pairs["split"] == "test"].reset_index(drop=True)
    n_corpus = int((pairs["split"] == "train").sum())
    echo(f"rlthf: {len(pairs)} pairs: {n_corpus} corpus ({len(shard)} in the shard), {len(test)} test; "
         f"run directory {rd.root}")
    if annotator is None:
        annotator = make_annotator(config, rd, dict(zip(shard["id"], shard["truth"])))

    labels = initial_labels(rd, config, shard, cache_dir)
    labelled = labels["label"].notna().to_numpy()  # a judge may leave a pair without a label
    checkpoint = train_step(rd, 0, config, backend, shard[labelled].assign(label=labels["label"][labelled].to_numpy()))
    scores = score_step(rd, 0, backend, checkpoint, shard, test)
    labels = validate_step(rd, config, annotator, shard, labels, scores["shard"])
    rows = [metrics_step(rd, 0, shard, test, labels, scores, n_corpus)]
    atomic_write_jsonl(rd.path("metrics.jsonl"), rows)
    echo(format_table(rows))
    if on_iteration:
        on_iteration(rows[-1])

    for k in range(1, config.selection.iterations + 1):
        selection = select_step(rd, k, config, shard, labels, scores["shard"])
        labels = annotate_step(rd, k, annotator, shard, labels, selection)
        train_rows = shard.loc[selection["train"]].assign(label=labels["label"].to_numpy()[selection["train"]])
        checkpoint = train_step(rd, k, config, backend, train_rows)
        scores = score_step(rd, k, backend, checkpoint, shard, test)
        rows.append(metrics_step(rd, k, shard, test, labels, scores, n_corpus))
        atomic_write_jsonl(rd.path("metrics.jsonl"), rows)
        echo(format_table(rows[-1:]).splitlines()[-1])
        if on_iteration:
            on_iteration(rows[-1])

    plot_accuracy(rows, rd.path("accuracy.png"))
    curated_path, summary = curate_step(rd, backend, checkpoint, pairs, labels, rows)
    atomic_write_text(rd.path("table.md"), format_table(rows) + "\n")
    echo("\n" + format_table(rows))
    echo(f"\ncurated {summary['curated_pairs']} pairs -> {curated_path} (label accuracy vs ground truth "
         f"{summary['curated_label_acc']:.1%}; {summary['human_labels']} human labels = "
         f"{summary['human_pct_corpus']:.2f}% of the corpus)")
    return RunResult(rd.root, rows, curated_path, summary)


def _corpus_size(rd: RunDir) -> int:
    return rd.info("prepare")["pairs"] - rd.info("prepare")["test"]


def make_annotator(config: RLTHFConfig, rd: RunDir, truth: dict) -> Annotator:
    if config.annotation.annotator == "file_queue":
        return FileQueueAnnotator(rd.root, overlap=config.annotation.overlap, seed=config.seed)
    return SimulatedHuman(rd.root, truth, error_rate=config.annotation.human_error_rate, seed=config.seed)


# --- steps --------------------------------------------------------------------------------------------------

def prepare(rd: RunDir, config: RLTHFConfig, cache_dir: str) -> pd.DataFrame:
    """Load every valid pair, mark the test split and the shard, and fix the ground truth (``truth``)."""
    path = rd.path("data", "pairs.parquet")
    if rd.done("prepare"):
        return pd.read_parquet(path)
    with _Timer() as t:
        d = config.data
        pairs, rejected = read_pairs(d.path, format=d.format, seed=config.seed, on_invalid=d.on_invalid,
                                     max_pairs=d.max_pairs, hf_split=d.hf_split)
        atomic_write_jsonl(rd.path("data", "rejected.jsonl"), [r.to_dict() for r in rejected])
        if rejected:
            log.warning("%d invalid records skipped, each with its line and field in %s (first: %s)",
                        len(rejected), rd.path("data", "rejected.jsonl"), rejected[0])
        pairs = pairs.sort_values("id", kind="stable").reset_index(drop=True)
        ids = pairs["id"].to_numpy()
        is_test = split_test(ids, d.test_fraction, config.seed)
        pairs["split"] = np.where(is_test, "test", "train")
        in_shard = np.zeros(len(pairs), bool)
        in_shard[np.flatnonzero(~is_test)[choose_shard(ids[~is_test], d.shard_fraction, config.seed)]] = True
        pairs["in_shard"] = in_shard
        flipped_fraction = 0.0
        if d.ground_truth == "paper_flipped":
            _require_human_labels(pairs, "data.ground_truth=paper_flipped")
            init_ray(config.ray)
            sim = simulation_reward_config(d.ground_truth_model)
            from rlthf.reward.encoder_head import EncoderHeadReward

            emb_a, emb_b = EncoderHeadReward(sim, cache_dir).embeddings(pairs)
            truth, flipped = paper_flipped_truth(emb_a, emb_b, pairs["human_label"], config=sim, seed=config.seed)
            pairs["truth"] = truth
            flipped_fraction = float(flipped.mean())
        else:
            pairs["truth"] = pairs["human_label"]
        atomic_write_parquet(path, pairs)
    rd.mark_done("prepare", seconds=t.seconds, pairs=len(pairs), test=int(is_test.sum()), shard=int(in_shard.sum()),
                 rejected=len(rejected), truth_flipped_fraction=flipped_fraction)
    if flipped_fraction:
        log.warning("ground truth: %.1f%% of the human labels flipped (paper appendix C.1.2)", 100 * flipped_fraction)
    return pairs


def _require_human_labels(df: pd.DataFrame, what: str) -> None:
    missing = df["human_label"].isna()
    if missing.any():
        raise ValueError(f"{what} needs the dataset's human labels; pair {df['id'][missing].iloc[0]!r} has none")


def initial_labels(rd: RunDir, config: RLTHFConfig, shard: pd.DataFrame, cache_dir: str) -> pd.DataFrame:
    """Iteration 0's working labels: the (simulated) AI labeler on every shard pair."""
    path = rd.path("iterations", "iter_0", "labels.parquet")
    if rd.done("iter_0/labels"):
        return pd.read_parquet(path)
    if config.ai_labels.source == "judge":
        judged = judge_step(rd, config, shard)
        labels = pd.DataFrame({"id": shard["id"], "label": judged["label"].to_numpy(), "label_source": "ai",
                               "ai_label": judged["label"].to_numpy(), "initial_source": "ai", "human_iteration": -1})
        atomic_write_parquet(path, labels)
        rd.mark_done("iter_0/labels", seconds=rd.info("judge")["step_seconds"],
                     ai_accuracy=label_accuracy(labels["label"].dropna(), shard["truth"][labels["label"].notna()]))
        return labels
    with _Timer() as t:
        a = config.ai_labels
        truth = shard["truth"]
        _require_human_labels(shard.assign(human_label=truth), "ai_labels.source=simulated")
        hardness = None
        if a.noise == "hardness":
            from rlthf.reward.encoder_head import EncoderHeadReward

            sim = simulation_reward_config(a.hardness_model)
            emb_a, emb_b = EncoderHeadReward(sim, cache_dir).embeddings(shard)
            hardness = hardness_scores(emb_a, emb_b, truth, folds=a.hardness_folds, config=sim, seed=config.seed)
        ai = simulate_ai_labels(truth, target_accuracy=a.target_accuracy, seed=config.seed, hardness=hardness,
                                sharpness=a.hardness_sharpness, noise=a.noise)
        labels = pd.DataFrame({"id": shard["id"], "label": ai, "label_source": "ai", "ai_label": ai,
                               "initial_source": "ai", "human_iteration": -1})
        atomic_write_parquet(path, labels)
    rd.mark_done("iter_0/labels", seconds=t.seconds, ai_accuracy=label_accuracy(ai, truth))
    return labels


def judge_step(rd: RunDir, config: RLTHFConfig, shard: pd.DataFrame) -> pd.DataFrame:
    """A real LLM judge labels the shard (``judge/labels.parquet``, ``judge/report.json``, verdict cache)."""
    from rlthf.judges.labeling import label_pairs

    path = rd.path("judge", "labels.parquet")
    if not rd.done("judge"):
        init_ray(config.ray)
        with _Timer() as t:
            # accuracy is reported against the run's ground truth (data.ground_truth)
            labels, report = label_pairs(shard.assign(human_label=shard["truth"]), config.judge,
                                         rd.path("judge", "verdicts.jsonl"))
            atomic_write_parquet(path, labels)
            atomic_write_json(rd.path("judge", "report.json"), report)
        rd.mark_done("judge", **{k: v for k, v in report.items() if not isinstance(v, dict)}, step_seconds=t.seconds)
    return pd.read_parquet(path)


def label_shard(config: RLTHFConfig, echo: Callable[[str], None] = print) -> dict:
    """`rlthf label`: load, split and shard as `rlthf run` does, and label the shard with the configured judge."""
    rd = RunDir(config.output_dir, mirror=config.storage_path)
    _check_resume_config(rd, config)
    cache_dir = config.reward.cache_dir or str(rd.root / "cache")
    pairs = prepare(rd, config, cache_dir)
    judge_step(rd, config, pairs[pairs["in_shard"]].reset_index(drop=True))
    report = json.loads(rd.path("judge", "report.json").read_text())
    echo(json.dumps(report, indent=2))
    return report


def validate_step(rd: RunDir, config: RLTHFConfig, annotator: Annotator, shard: pd.DataFrame, labels: pd.DataFrame,
                  shard_scores: pd.DataFrame) -> pd.DataFrame:
    """After iteration 0: pairs the AI left unlabelled take reward model 0's label (source ``rm``), and the
    eyes-off validation (paper 3.2.3) shows a human a few pairs from the curve's upper left, where the AI
    labels should be right; low agreement means the judge or its prompt is misaligned with the user."""
    path = rd.path("iterations", "iter_0", "labels_validated.parquet")
    if rd.done("iter_0/validate"):
        return pd.read_parquet(path)
    a = config.annotation
    with _Timer() as t:
        new = labels.copy()
        gaps = new["label"].isna().to_numpy()
        filled = rm_labels(shard_scores["reward_a"], shard_scores["reward_b"])[gaps]
        new.loc[gaps, "label"] = filled
        new.loc[gaps, "ai_label"] = filled
        new.loc[gaps, "label_source"] = "rm"
        new.loc[gaps, "initial_source"] = "rm"
        count = min(max(a.eyes_off_min, int(np.ceil(a.eyes_off_fraction * len(shard)))), int((~gaps).sum()))
        count = cap_to_budget(count, a.budget, corpus_size=_corpus_size(rd), used=0)  # the first human labels
        agreement = None
        if count:
            analysis = shard_curve(config.selection, shard["id"], new["label"], shard_scores)
            ai_ranked = analysis.order[~gaps[analysis.order]]  # it checks the AI's labels, not model 0's
            head = ai_ranked[:max(analysis.elbow_index, count)]  # the upper left, at least `count` pairs
            chosen = np.sort(np.random.default_rng(config.seed).choice(head, size=count, replace=False))
            answers = annotator.annotate(shard.loc[chosen, PAIR_TEXT].reset_index(drop=True), 0)
            human = np.array([answers[i] for i in shard["id"].to_numpy()[chosen]], dtype=object)
            agreement = float(np.mean(human == new["label"].to_numpy()[chosen]))
            label = new["label"].to_numpy().astype(object)
            label[chosen] = human
            new["label"] = label
            new.loc[chosen, "label_source"] = "human"
            new.loc[chosen, "human_iteration"] = 0
            if agreement < a.eyes_off_warn_below:
                log.warning("EYES-OFF VALIDATION FAILED: humans agree with only %.0f%% of %d high-confidence AI labels "
                            "(threshold %.0f%%). The judge, its prompt or its criteria do not match your preferences; "
                            "revise them before spending the annotation budget.", 100 * agreement, count,
                            100 * a.eyes_off_warn_below)
        atomic_write_parquet(path, new)
    rd.mark_done("iter_0/validate", seconds=t.seconds, filled=int(gaps.sum()), asked=count,
                 batch_was_wrong=0 if agreement is None else int(round((1 - agreement) * count)),
                 eyes_off_agreement=agreement)
    return new


def train_step(rd: RunDir, k: int, config: RLTHFConfig, backend, train_rows: pd.DataFrame) -> Path:
    """Reward model k on ``train_rows`` (id, prompt, response_a, response_b, label; repeats allowed)."""
    import ray

    final = rd.path("iterations", f"iter_{k}", "checkpoint")
    if rd.done(f"iter_{k}/train"):
        return final
    partial = final.with_name("checkpoint.partial")
    shutil.rmtree(partial, ignore_errors=True)  # a crash mid-training left it behind
    with _Timer() as t:
        dataset = ray.data.from_pandas(train_rows[PAIR_TEXT + ["label"]].reset_index(drop=True))
        backend.train(dataset, partial, seed=config.seed + k)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    rd.mark_done(f"iter_{k}/train", seconds=t.seconds, rows=len(train_rows), pairs=int(train_rows["id"].nunique()))
    return final


def _score(backend, checkpoint: Path, pairs: pd.DataFrame) -> pd.DataFrame:
    import ray

    scored = backend.score(ray.data.from_pandas(pairs[PAIR_TEXT].reset_index(drop=True)), checkpoint).to_pandas()
    scored = scored.set_index("id").reindex(pairs["id"])
    if scored["reward_a"].isna().any():
        raise RuntimeError(f"scoring lost pair {scored.index[scored['reward_a'].isna()][0]!r}")
    return scored.reset_index()[["id", "reward_a", "reward_b"]]


def score_step(rd: RunDir, k: int, backend, checkpoint: Path, shard: pd.DataFrame, test: pd.DataFrame) -> dict:
    """Rewards of model k on every shard pair (for the next curve) and every test pair (for its accuracy)."""
    paths = {name: rd.path("iterations", f"iter_{k}", f"scores_{name}.parquet") for name in ("shard", "test")}
    if not rd.done(f"iter_{k}/score"):
        with _Timer() as t:
            for name, pairs in (("shard", shard), ("test", test)):
                atomic_write_parquet(paths[name], _score(backend, checkpoint, pairs))
        rd.mark_done(f"iter_{k}/score", seconds=t.seconds)
    return {name: pd.read_parquet(p) for name, p in paths.items()}


def shard_curve(s: SelectionConfig, ids: pd.Series, labels: pd.Series, scores: pd.DataFrame):
    """The reward distribution curve of the shard: each pair's margin under its working label, analysed."""
    margins = label_sign(labels) * (scores["reward_a"] - scores["reward_b"]).to_numpy(dtype=float)
    return analyze_curve(margins, smoothing=s.smoothing, steepness_factor=s.steepness_factor,
                         min_points=s.min_points, knee_detector=s.knee_detector, ids=ids.to_numpy())


def select_step(rd: RunDir, k: int, config: RLTHFConfig, shard: pd.DataFrame, labels: pd.DataFrame,
                shard_scores: pd.DataFrame) -> dict:
    """The curve of model k-1 under the working labels, and what to flip, annotate and train on."""
    path = rd.path("iterations", f"iter_{k}", "selection.json")
    if rd.done(f"iter_{k}/select"):
        return _load_selection(path)
    s = config.selection
    with _Timer() as t:
        analysis = shard_curve(config.selection, shard["id"], labels["label"], shard_scores)
        alpha, beta = schedule_value(s.amplification, k), schedule_value(s.backoff, k)
        human = (labels["label_source"] == "human").to_numpy()
        batch = annotation_batch_size(len(shard), s.annotation_fraction)
        batch = cap_to_budget(batch, config.annotation.budget, corpus_size=_corpus_size(rd), used=int(human.sum()))
        if s.selector == "random":
            selection = select_random(len(shard), human, annotation_size=batch, seed=config.seed + k)
        else:
            order = None  # rlthf's own; another selector only changes which pairs go to humans (rlthf/selectors.py)
            if s.selector != "rlthf":
                from rlthf.committee import annotation_order

                order = annotation_order(config, shard, labels["label"], shard_scores,
                                         cache_dir=config.reward.cache_dir or str(rd.root / "cache"),
                                         seed=config.seed + k)
            selection = select_pairs(analysis, human, annotation_size=batch, amplification=alpha, backoff=beta,
                                     flip=s.flip, annotation_order=order)
        record = {"analysis": analysis.summary(), "amplification": alpha, "backoff": beta, **selection.summary(),
                  "flip": selection.flip.tolist(), "annotate": selection.annotate.tolist(),
                  "train": selection.train.tolist(), "ids": {"flip": shard["id"].to_numpy()[selection.flip].tolist(),
                                                             "annotate": shard["id"].to_numpy()[selection.annotate].tolist()}}
        atomic_write_json(path, record)
        correct = (labels["label"].to_numpy() == shard["truth"].to_numpy()) if shard["truth"].notna().all() else None
        plot_curve(analysis, correct, rd.path("iterations", f"iter_{k}", "curve.png"),
                        f"iteration {k}: reward model {k - 1} on the shard")
    rd.mark_done(f"iter_{k}/select", seconds=t.seconds)
    return _load_selection(path)


def _load_selection(path: Path) -> dict:
    record = json.loads(path.read_text())
    for key in ("flip", "annotate", "train"):
        record[key] = np.asarray(record[key], dtype=np.int64)
    return record


def annotate_step(rd: RunDir, k: int, annotator: Annotator, shard: pd.DataFrame, labels: pd.DataFrame,
                  selection: dict) -> pd.DataFrame:
    """Flip the pairs past the reflection point, ask humans for the batch, and keep the new working labels."""
    path = rd.path("iterations", f"iter_{k}", "labels.parquet")
    if rd.done(f"iter_{k}/annotate"):
        return pd.read_parquet(path)
    with _Timer() as t:
        batch = selection["annotate"]
        answers = annotator.annotate(shard.loc[batch, PAIR_TEXT].reset_index(drop=True), k) if len(batch) else {}
        new = labels.copy()
        label = new["label"].to_numpy().astype(object)
        flip = selection["flip"]
        label[flip] = flip_labels(label[flip])
        source = np.where(label == new["ai_label"].to_numpy(), new["initial_source"], "flipped").astype(object)
        source[new["label_source"].to_numpy() == "human"] = "human"
        ids = shard["id"].to_numpy()
        for position in batch:
            label[position] = answers[ids[position]]
            source[position] = "human"
        human_iteration = new["human_iteration"].to_numpy().copy()
        human_iteration[batch] = k
        new["label"], new["label_source"], new["human_iteration"] = label, source, human_iteration
        atomic_write_parquet(path, new)
        truth = shard["truth"].to_numpy()
        before = labels["label"].to_numpy()
    rd.mark_done(f"iter_{k}/annotate", seconds=t.seconds, asked=len(batch), flips=len(flip),
                 flips_right=int((label[flip] == truth[flip]).sum()),
                 batch_was_wrong=int((before[batch] != truth[batch]).sum()))
    return new


def metrics_step(rd: RunDir, k: int, shard: pd.DataFrame, test: pd.DataFrame, labels: pd.DataFrame, scores: dict,
                 n_corpus: int) -> dict:
    """One row of the per-iteration table (also ``iterations/iter_k/metrics.json``)."""
    path = rd.path("iterations", f"iter_{k}", "metrics.json")
    if rd.done(f"iter_{k}/metrics"):
        return json.loads(path.read_text())
    human = labels["label_source"].to_numpy() == "human"
    test_acc = preference_accuracy(scores["test"]["reward_a"], scores["test"]["reward_b"], test["truth"])
    curated = np.where(human, labels["label"], rm_labels(scores["shard"]["reward_a"], scores["shard"]["reward_b"]))
    step = {name: rd.info(f"iter_{k}/{name}") if rd.done(f"iter_{k}/{name}") else {}
            for name in ("labels", "validate", "select", "annotate", "train", "score")}
    asked_step = step["validate"] if k == 0 else step["annotate"]
    analysis = _load_selection(rd.path("iterations", f"iter_{k}", "selection.json"))["analysis"] if k else {}
    row = {
        "iteration": k,
        "human_labels": int(human.sum()),
        "human_pct_shard": 100 * human.mean(),
        "human_pct_corpus": 100 * human.sum() / n_corpus,
        "asked": asked_step.get("asked", 0),
        "batch_was_wrong": asked_step.get("batch_was_wrong", 0),
        "eyes_off_agreement": step["validate"].get("eyes_off_agreement"),
        "ai_unlabelled": step["validate"].get("filled", 0),
        "flips": step["annotate"].get("flips", 0),
        "flips_right": step["annotate"].get("flips_right", 0),
        "label_acc": label_accuracy(labels["label"], shard["truth"]),
        "rm_label_acc": label_accuracy(curated, shard["truth"]),
        "test_acc": test_acc,
        "test_acc_ci": list(wilson_interval(test_acc * len(test), len(test))),
        "test_pairs": len(test),
        "elbow_index": analysis.get("elbow_index"),
        "knee_index": analysis.get("knee_index"),
        "reflection_index": analysis.get("reflection_index"),
        "train_rows": step["train"].get("rows"),
        "step_seconds": {name: round(info.get("seconds", 0.0), 2) for name, info in step.items() if info},
    }
    row["wall_s"] = sum(row["step_seconds"].values())
    atomic_write_json(path, row)
    rd.mark_done(f"iter_{k}/metrics")
    return row


def curate_step(rd: RunDir, backend, checkpoint: Path, pairs: pd.DataFrame, labels: pd.DataFrame,
                rows: list[dict]) -> tuple[Path, dict]:
    """The last reward model labels the whole corpus; human labels are kept. Writes curated.parquet."""
    path = rd.path("curated.parquet")
    summary_path = rd.path("summary.json")
    if not rd.done("final/curate"):
        with _Timer() as t:
            corpus = pairs[pairs["split"] == "train"].reset_index(drop=True)
            scores = _score(backend, checkpoint, corpus)
            label = rm_labels(scores["reward_a"], scores["reward_b"])
            source = np.full(len(corpus), "rm", dtype=object)
            human = labels[labels["label_source"] == "human"].set_index("id")["label"]
            is_human = corpus["id"].isin(human.index).to_numpy()
            label[is_human] = human.reindex(corpus["id"][is_human]).to_numpy()
            source[is_human] = "human"
            a_wins = label == "a"
            margin = (scores["reward_a"] - scores["reward_b"]).to_numpy() * np.where(a_wins, 1, -1)
            curated = pd.DataFrame({
                "prompt": corpus["prompt"],
                "chosen": np.where(a_wins, corpus["response_a"], corpus["response_b"]),
                "rejected": np.where(a_wins, corpus["response_b"], corpus["response_a"]),
                "id": corpus["id"], "label_source": source, "reward_margin": margin,
                "in_shard": corpus["in_shard"]})
            atomic_write_parquet(path, curated)
            has_truth = corpus["truth"].notna().to_numpy()
            summary = {
                "curated_pairs": len(curated),
                "curated_label_acc": label_accuracy(label[has_truth], corpus["truth"][has_truth]),
                "human_labels": int(is_human.sum()),
                "human_pct_corpus": 100 * is_human.mean(),
                "ai_label_acc_shard": rows[0]["label_acc"],
                "final_label_acc_shard": rows[-1]["label_acc"],
                "final_test_acc": rows[-1]["test_acc"],
                "truth_flipped_fraction": rd.info("prepare")["truth_flipped_fraction"],
                "iterations": len(rows) - 1,
                "checkpoint": str(checkpoint),
            }
            atomic_write_json(summary_path, summary)
        rd.mark_done("final/curate", seconds=t.seconds)
    return path, json.loads(summary_path.read_text())
