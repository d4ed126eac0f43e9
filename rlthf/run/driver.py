"""The RLTHF driver: one linear loop, every step saved in the run directory so that a rerun resumes.

    prepare          load, split off the test set, draw the shard, fix the ground truth
    features         a corpus too large for the driver: every pair's reward features, written once
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional

import yaml

from rlthf.annotation.annotators import Annotator, FileQueueAnnotator, LabelTable, SimulatedHuman
from rlthf.cluster.session import init_ray
from rlthf.config import ConfigError, RLTHFConfig
from rlthf.reward.backends import make_reward_backend
from rlthf.rundir import RunDir, atomic_write_jsonl, atomic_write_text
from rlthf.run.logs import run_log
from rlthf.run.report import format_table, plot_accuracy, summary_text, warn_if_worse
from rlthf.run.steps import (ai_labels_step, annotate_step, audit_step, cache_location, curate_step, features_step,
                             forget_final_steps_before, initial_labels, judge_step, metrics_step, prepare, score_step,
                             select_step, train_step, validate_step)

if TYPE_CHECKING:
    from rlthf.annotation.served import PageAddress

log = logging.getLogger("rlthf")

# What the loop reads: a finished step stays valid only while these keep their values. Other sections (dpo,
# winrate, downstream) belong to the stages that read a finished run and may change freely.
RUN_KEYS = ("seed", "data.", "ai_labels.", "judge.", "annotation.", "selection.", "reward.", "curate.")
# Keys of the loop's own sections that may still change between a run and its resumption: where Ray runs, how
# fast scoring goes, how far to go.
RESUMABLE_CHANGES = ("selection.iterations", "reward.cache_dir", "judge.cache_dir", "reward.score_batch_size",
                     "reward.score_concurrency", "reward.num_workers", "reward.cpus_per_worker",
                     "reward.max_failures", "reward.storage_path")


@dataclass
class RunResult:
    run_dir: Path
    metrics: list[dict]
    curated_path: Path
    summary: dict


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
            if saved.get(key) != value and key.startswith(RUN_KEYS) and not key.startswith(RESUMABLE_CHANGES):
                raise ConfigError(f"{key}: this run directory ({rd.root}) was started with {saved.get(key)!r}, the "
                                  f"config now says {value!r}; use a new output_dir to run with other settings")
    atomic_write_text(saved_path, yaml.safe_dump(current, sort_keys=False))


def run(config: RLTHFConfig, *, annotator: Optional[Annotator] = None,
        echo: Callable[[str], None] = print,
        on_iteration: Optional[Callable[[dict], None]] = None) -> RunResult:
    """Run (or resume) RLTHF as the config says; returns the metrics rows and the curated dataset's path.
    ``on_iteration`` gets every iteration's metrics row as soon as it is written (a Tune trial reports it).
    Everything the run prints and logs also goes to ``<output_dir>/run.log`` (:func:`rlthf.run.logs.run_log`)."""
    rd = RunDir(config.output_dir, mirror=config.storage_path)
    with run_log(rd.root):
        return _run_logged(rd, config, annotator=annotator, echo=echo, on_iteration=on_iteration)


def _run_logged(rd: RunDir, config: RLTHFConfig, *, annotator: Optional[Annotator],
                echo: Callable[[str], None], on_iteration: Optional[Callable[[dict], None]]) -> RunResult:
    _check_resume_config(rd, config)
    cache_dir = cache_location(rd, config)
    pairs = prepare(rd, config, cache_dir)  # bad data fails here, before Ray starts
    init_ray(config.ray)
    backend = make_reward_backend(config.reward, cache_dir)
    features_step(rd, backend, pairs)
    # the corpus (every pair but the test set's) stays a mask: a copy of it costs ~90 bytes a pair
    in_corpus = (pairs["split"] == "train").to_numpy()
    corpus_pairs = int(in_corpus.sum())
    shard = pairs[pairs["in_shard"]].reset_index(drop=True)
    test = pairs[~in_corpus].reset_index(drop=True)
    echo(f"rlthf: {len(pairs)} pairs: {corpus_pairs} corpus ({len(shard)} in the shard), {len(test)} test; "
         f"run directory {rd.root}")
    if annotator is None:
        annotator = make_annotator(config, rd, LabelTable(pairs["id"][in_corpus], pairs["truth"][in_corpus]))
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        atomic_write_jsonl(rd.path("metrics.jsonl"), rows)
        echo(format_table(rows) if len(rows) == 1 else format_table(rows[-1:]).splitlines()[-1])
        if on_iteration:
            on_iteration(row)

    ai_labels = ai_labels_step(rd, config, pairs, cache_dir)
    labels = initial_labels(rd, shard, ai_labels)
    labelled = labels["label"].notna().to_numpy()  # a judge may leave a pair without a label
    checkpoint = train_step(rd, 0, config, backend, shard[labelled].assign(label=labels["label"][labelled].to_numpy()))
    scores = score_step(rd, 0, backend, checkpoint, shard, test)
    labels = validate_step(rd, config, annotator, shard, labels, scores["shard"])
    record(metrics_step(rd, 0, shard, test, labels, scores, corpus_pairs))
    for k in range(1, config.selection.iterations + 1):
        selection = select_step(rd, k, config, shard, labels, scores["shard"], ai_labels)
        labels = annotate_step(rd, k, annotator, shard, labels, selection)
        train_rows = shard.loc[selection["train"]].assign(label=labels["label"].to_numpy()[selection["train"]])
        checkpoint = train_step(rd, k, config, backend, train_rows)
        scores = score_step(rd, k, backend, checkpoint, shard, test)
        record(metrics_step(rd, k, shard, test, labels, scores, corpus_pairs))

    plot_accuracy(rows, rd.path("accuracy.png"))
    last = config.selection.iterations
    if stale := forget_final_steps_before(rd, last):
        log.info("%s ran after another iteration than %d: running them again", " and ".join(stale), last)
    audit = audit_step(rd, config, annotator, pairs[in_corpus].reset_index(drop=True), labels, after_iteration=last)
    curated_path, summary = curate_step(rd, config, backend, checkpoint, pairs, labels, ai_labels, audit,
                                        after_iteration=last)
    atomic_write_text(rd.path("table.md"), format_table(rows) + "\n")
    echo("\n" + format_table(rows) + "\n\n" + summary_text(summary, curated_path))
    warn_if_worse(summary)
    return RunResult(rd.root, rows, curated_path, summary)


def make_annotator(config: RLTHFConfig, rd: RunDir | str | Path, truth: Optional[Mapping | LabelTable] = None, *,
                   serve: Optional["PageAddress"] = None) -> Annotator:
    """The annotator the config names. ``serve``: people answer on the page that the run serves at that address,
    and the run waits for them (``rlthf run --serve``) instead of stopping with exit status 3."""
    a = config.annotation
    if serve is not None:
        if a.annotator != "file_queue":
            raise ConfigError(f"annotation.annotator: --serve waits for people, so it needs file_queue; the config "
                              f"says {a.annotator!r} (add --set annotation.annotator=file_queue for a new run)")
        from rlthf.annotation.served import ServedAnnotator

        return ServedAnnotator(rd, serve, overlap=a.overlap, seed=config.seed)
    if a.annotator == "file_queue":
        return FileQueueAnnotator(rd, overlap=a.overlap, seed=config.seed)
    if truth is None:
        raise ValueError("the simulated human answers from the ground truth: make_annotator needs truth")
    return SimulatedHuman(rd, truth, error_rate=a.human_error_rate, seed=config.seed)


def label_shard(config: RLTHFConfig, echo: Callable[[str], None] = print) -> dict:
    """`rlthf label`: load, split and shard as `rlthf run` does, and label the shard with the configured judge."""
    rd = RunDir(config.output_dir, mirror=config.storage_path)
    _check_resume_config(rd, config)
    cache_dir = cache_location(rd, config)
    pairs = prepare(rd, config, cache_dir)
    judge_step(rd, config, pairs[pairs["in_shard"]].reset_index(drop=True))
    report = json.loads(rd.path("judge", "report.json").read_text())
    echo(json.dumps(report, indent=2))
    return report
