"""The steps of an RLTHF run (see ``rlthf.run.driver``). Each writes its outputs atomically, then marks itself
done in ``steps.json``; a finished step loads what it wrote instead of running again."""
from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import pandas as pd

from rlthf.annotation.annotators import Annotator
from rlthf.annotation.store import AUDIT_ITERATION
from rlthf.cluster.session import init_ray
from rlthf.config import RLTHFConfig, SelectionConfig
from rlthf.core.audit import audit_sample, estimate_accuracy
from rlthf.core.curation import CuratedLabels, curate
from rlthf.core.curve import analyze_curve
from rlthf.core.labels import PAIR_TEXT, hash_unit, label_sign, objects_full, rm_labels
from rlthf.core.metrics import label_accuracy, preference_accuracy, wilson_interval
from rlthf.core.selection import annotation_batch_size, budget_labels, cap_to_budget, schedule_value, select_pairs, select_random
from rlthf.core.selectors import (committee_order, confident_learning_order, least_confident_first, oracle_order,
                                 rlthf_order, suspicious_first, uncertainty_order)
from rlthf.core.simulate import simulate_ai_labels
from rlthf.core.working_labels import (eyes_off_positions, fill_unlabelled, initial_labels_frame,
                                       with_answers, with_flips)
from rlthf.data import column_ai_labels, group_draws, read_configured_pairs, split_by_draws
from rlthf.reward.backends import committee_reward_config, simulation_reward_config
from rlthf.rundir import RunDir, atomic_write_json, atomic_write_jsonl, atomic_write_parquet, is_uri, replace_dir_when_done
from rlthf.run.corpus import (TEXTS, beyond_driver, column_by_id, columns_by_id, has_id, numpy_values, pa_strings,
                              pair_texts, pairs_dataset, read_pairs_index, texts_dataset, texts_path, with_texts,
                              write_curated)
from rlthf.run.report import plot_curve

log = logging.getLogger("rlthf")
T = TypeVar("T")
DRAWS = ("test_draw", "shard_draw")  # a pair's group hashes, from which prepare splits
# What the loop keeps of every pair; the data's other columns stay in data/pairs.parquet for the step that reads
# them (AI labels from a column), as the texts stay in data/texts.parquet.
# text_row: the pair's row in data/texts.parquet (the data file's order), so the curated file is written in that
# order without a hash of every id.
INDEX = ("id", "split", "in_shard", "truth", "text_row")


def once(rd: RunDir, name: str, compute: Callable[[], dict | None], load: Callable[[], T]) -> T:
    """The frame of every step: unless step ``name`` is done, ``compute`` writes its outputs atomically and returns
    what to record of it; the step is then marked done with its wall time. Either way the step's result is what
    ``load`` reads back from disk, so a resumed run sees exactly what an uninterrupted one saw."""
    if not rd.done(name):
        start = time.perf_counter()
        info = compute() or {}
        seconds = time.perf_counter() - start
        release_memory()
        rd.mark_done(name, **{"seconds": seconds, **memory_info(), **info})
    return load()


def release_memory() -> None:
    """Give what a finished step freed back to the system: Arrow's allocator (mimalloc) and glibc's keep freed
    pages for reuse, so one step's temporaries would stay in the driver's resident memory under every later step's."""
    import ctypes
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # a libc other than glibc's
            pass


def memory_info() -> dict:
    """This process's peak resident memory so far, in MiB (where a step raises it, that step holds the most), and
    on Linux its resident memory now, split into its own (anonymous) pages and shared ones: the pages of Ray's
    object store it has read or written count in its RSS, though the object store holds them."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    info = {"driver_peak_rss_mib": round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)}
    status = Path("/proc/self/status")
    if status.exists():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        for name, key in (("RssAnon", "driver_rss_own_mib"), ("RssShmem", "driver_rss_shared_mib")):
            if name in fields:
                info[key] = round(int(fields[name].split()[0]) / 1024, 1)
    return info


def cache_location(rd: RunDir, config: RLTHFConfig) -> str:
    """The embedding cache's root: ``reward.cache_dir``, else the run's ``cache/`` (in its mirror when it has
    one: the actors that embed a streamed corpus write to it from any node)."""
    return config.reward.cache_dir or rd.shared("cache")


def corpus_size(rd: RunDir) -> int:
    return rd.info("prepare")["pairs"] - rd.info("prepare")["test"]


def iteration_path(k: int, name: str) -> tuple[str, ...]:
    return "iterations", f"iter_{k}", name


def read_parquet(rd: RunDir, *parts: str) -> Callable[[], pd.DataFrame]:
    return lambda: pd.read_parquet(rd.path(*parts))


# --- steps --------------------------------------------------------------------------------------------------

def prepare(rd: RunDir, config: RLTHFConfig, cache_dir: str) -> pd.DataFrame:
    """Load every valid pair, mark the test split and the shard, and fix the ground truth (``truth``); returns
    the pairs' ``INDEX`` columns."""
    def compute() -> dict:
        # the group's hashes are drawn from each chunk as it is read when the group is a text (the prompt)
        grouped_by_text = config.data.group_column in PAIR_TEXT
        derive = (lambda chunk: group_draws(chunk, config.data, config.seed)) if grouped_by_text else None
        pairs, rejected = read_configured_pairs(config, texts_path(rd), derive)
        rd.share(*TEXTS)  # (the ground truth below may read them)
        atomic_write_jsonl(rd.path("data", "rejected.jsonl"), [r.to_dict() for r in rejected])
        if rejected:
            log.warning("%d invalid records skipped, each with its line and field in %s (first: %s)",
                        len(rejected), rd.path("data", "rejected.jsonl"), rejected[0])
        if pairs.empty:
            raise ValueError(f"{config.data.path}: no valid pair; {len(rejected)} records rejected, each with its "
                             f"line and field in {rd.path('data', 'rejected.jsonl')}")
        # (a data column named like a derived draw is refused by the reader)
        own = ("split", "in_shard", "truth", "text_row") + (() if grouped_by_text else DRAWS)
        clash = [c for c in own if c in pairs.columns]
        if clash:
            raise ValueError(f"{config.data.path}: the data has a column {clash[0]!r}, a name the run uses itself")
        draws = pairs[list(DRAWS)] if grouped_by_text else pd.DataFrame(group_draws(pairs, config.data, config.seed))
        order = np.argsort(pairs["id"].to_numpy(), kind="stable")
        pairs = pairs.drop(columns=list(DRAWS), errors="ignore").iloc[order].reset_index(drop=True)
        pairs["text_row"] = order  # the reader wrote the texts in its own order
        draws = draws.iloc[order].reset_index(drop=True)
        is_test, in_shard = split_by_draws(draws["test_draw"].to_numpy(), draws["shard_draw"].to_numpy(),
                                           config.data)
        pairs["split"] = np.where(is_test, "test", "train")
        pairs["in_shard"] = in_shard
        pairs["truth"], flipped_fraction = ground_truth(rd, pairs, config, cache_dir)
        atomic_write_parquet(rd.path("data", "pairs.parquet"), pairs)
        if flipped_fraction:
            log.warning("ground truth: %.1f%% of the human labels flipped (paper appendix C.1.2)",
                        100 * flipped_fraction)
        return {"pairs": len(pairs), "test": int(is_test.sum()), "shard": int(in_shard.sum()),
                "rejected": len(rejected), "truth_flipped_fraction": flipped_fraction,
                "audit_reserved": audit_reserve(config, int((~is_test).sum()))}

    return once(rd, "prepare", compute, lambda: read_pairs_index(rd, INDEX))


def audit_reserve(config: RLTHFConfig, corpus_pairs: int) -> int:
    """Human labels set aside for the audit: ``annotation.audit_fraction`` of the corpus, at most half the budget
    (the targeted batches get the rest)."""
    wanted = int(np.ceil(config.annotation.audit_fraction * corpus_pairs))
    budget = budget_labels(config.annotation.budget, corpus_pairs)
    return wanted if budget is None else min(wanted, budget // 2)


def ground_truth(rd: RunDir, pairs: pd.DataFrame, config: RLTHFConfig, cache_dir: str) -> tuple[np.ndarray, float]:
    """The labels every accuracy is measured against (``data.ground_truth``), and the share flipped."""
    if config.data.ground_truth != "paper_flipped":
        return pairs["human_label"].to_numpy(), 0.0
    _require_human_labels(pairs, "data.ground_truth=paper_flipped")
    init_ray(config.ray)
    from rlthf.reward.encoder_head import EncoderHeadReward
    from rlthf.reward.heads import paper_flipped_truth

    sim = simulation_reward_config(config.data.ground_truth_model)
    emb_a, emb_b = EncoderHeadReward(sim, cache_dir).embeddings(with_texts(rd, pairs))
    truth, flipped = paper_flipped_truth(emb_a, emb_b, pairs["human_label"], config=sim, seed=config.seed)
    return truth, float(flipped.mean())


def _require_human_labels(df: pd.DataFrame, what: str) -> None:
    missing = df["human_label"].isna()
    if missing.any():
        raise ValueError(f"{what} needs the dataset's human labels; pair {df['id'][missing].iloc[0]!r} has none")


def ai_labels_step(rd: RunDir, config: RLTHFConfig, pairs: pd.DataFrame, cache_dir: str) -> pd.DataFrame:
    """The AI's label on every corpus pair (``id, ai_label``; None where it gave none): a data column's, the
    simulated labeler's, or a live judge's (the judge labels the shard only: elsewhere None)."""
    path = ("data", "ai_labels.parquet")

    def compute() -> dict:
        corpus = pairs[pairs["split"] == "train"].reset_index(drop=True)
        shard = corpus[corpus["in_shard"]].reset_index(drop=True)
        source = config.ai_labels.source
        confidence = objects_full(len(corpus), "n/a")  # the judge's own doubt, where it says it
        judge_margin = np.full(len(corpus), np.nan)  # and its log-probability margin, where it scores them
        if source == "column":
            data = read_pairs_index(rd)  # with the data's own columns
            columns = column_ai_labels(data[data["split"] == "train"].reset_index(drop=True), config.ai_labels)
            label, confidence = columns["label"].to_numpy(dtype=object), columns["confidence"].to_numpy(dtype=object)
            judge_margin = columns["margin"].to_numpy(dtype=float)
        elif source == "judge":
            label = np.full(len(corpus), None, dtype=object)
            judged = judge_step(rd, config, shard).set_index("id").reindex(shard["id"])
            label[corpus["in_shard"].to_numpy()] = judged["label"].to_numpy()
            confidence[corpus["in_shard"].to_numpy()] = judged["confidence"].to_numpy()
            judge_margin[corpus["in_shard"].to_numpy()] = judged["logprob_margin"].to_numpy(dtype=float)
        else:  # the shard first, as before the corpus had AI labels, so a shard's labels do not depend on the rest
            label = np.full(len(corpus), None, dtype=object)
            rest = corpus[~corpus["in_shard"]].reset_index(drop=True)
            label[corpus["in_shard"].to_numpy()] = simulated_ai_labels(rd, config, shard, cache_dir, config.seed)
            if len(rest):
                label[~corpus["in_shard"].to_numpy()] = simulated_ai_labels(rd, config, rest, cache_dir,
                                                                           config.seed + 1)
        atomic_write_parquet(rd.path(*path), pd.DataFrame({"id": corpus["id"], "ai_label": pd.Series(label, dtype=object),
                                                           "ai_confidence": confidence,
                                                           "ai_judge_margin": judge_margin}))
        labelled = pd.notna(label)
        return {"labelled": int(labelled.sum()), "ai_accuracy": label_accuracy(label[labelled],
                                                                            corpus["truth"][labelled])}

    return once(rd, "ai_labels", compute, read_parquet(rd, *path))


def initial_labels(rd: RunDir, shard: pd.DataFrame, ai_labels: pd.DataFrame) -> pd.DataFrame:
    """Iteration 0's working labels: the AI's label on every shard pair."""
    path = iteration_path(0, "labels.parquet")

    def compute() -> dict:
        ai = column_by_id(ai_labels, "ai_label", shard["id"])
        atomic_write_parquet(rd.path(*path), initial_labels_frame(shard["id"], ai))
        labelled = pd.notna(ai)
        return {"ai_accuracy": label_accuracy(ai[labelled], shard["truth"][labelled])}

    return once(rd, "iter_0/labels", compute, read_parquet(rd, *path))


def simulated_ai_labels(rd: RunDir, config: RLTHFConfig, pairs: pd.DataFrame, cache_dir: str,
                        seed: int) -> np.ndarray:
    """The simulated AI labeler (``ai_labels``) on ``pairs``, its mistakes on hard pairs."""
    a = config.ai_labels
    truth = pairs["truth"]
    _require_human_labels(pairs.assign(human_label=truth), "ai_labels.source=simulated")
    hardness = None
    if a.noise == "hardness":
        from rlthf.reward.encoder_head import EncoderHeadReward
        from rlthf.reward.heads import hardness_scores

        init_ray(config.ray)
        sim = simulation_reward_config(a.hardness_model)
        emb_a, emb_b = EncoderHeadReward(sim, cache_dir).embeddings(with_texts(rd, pairs))
        hardness = hardness_scores(emb_a, emb_b, truth, folds=a.hardness_folds, config=sim, seed=seed)
    return simulate_ai_labels(truth, target_accuracy=a.target_accuracy, seed=seed, hardness=hardness,
                              sharpness=a.hardness_sharpness, noise=a.noise)


def judge_step(rd: RunDir, config: RLTHFConfig, shard: pd.DataFrame) -> pd.DataFrame:
    """A real LLM judge labels the shard (``judge/labels.parquet``, ``judge/report.json``, the verdict cache
    ``judge/verdicts/``)."""
    def compute() -> dict:
        from rlthf.judges.labeling import label_pairs

        init_ray(config.ray)
        # accuracy is reported against the run's ground truth (data.ground_truth)
        pairs = pairs_dataset(rd, pd.DataFrame({"id": shard["id"], "human_label": shard["truth"].to_numpy()}))
        # the judge's workers write the verdicts: where they reach (storage_path)
        verdicts = config.judge.cache_dir or rd.shared("judge", "verdicts")
        verdicts = verdicts if is_uri(verdicts) else str(Path(verdicts).resolve())
        _, report = label_pairs(pairs, config.judge, verdicts, pair_count=len(shard),
                                labels_path=rd.path("judge", "labels.parquet"))
        atomic_write_json(rd.path("judge", "report.json"), report)
        return {k: v for k, v in report.items() if not isinstance(v, dict)}

    return once(rd, "judge", compute, read_parquet(rd, "judge", "labels.parquet"))


def validate_step(rd: RunDir, config: RLTHFConfig, annotator: Annotator, shard: pd.DataFrame, labels: pd.DataFrame,
                  shard_scores: pd.DataFrame) -> pd.DataFrame:
    """After iteration 0: pairs the AI left unlabelled take reward model 0's label (source ``rm``), and the
    eyes-off validation (paper 3.2.3) shows a human a few pairs from the curve's upper left, where the AI
    labels should be right; low agreement means the judge or its prompt is misaligned with the user."""
    path = iteration_path(0, "labels_validated.parquet")

    def compute() -> dict:
        a = config.annotation
        new, gaps = fill_unlabelled(labels, shard_scores["reward_a"], shard_scores["reward_b"])
        count = min(max(a.eyes_off_min, int(np.ceil(a.eyes_off_fraction * len(shard)))), int((~gaps).sum()))
        count = cap_to_budget(count, a.budget, corpus_size=corpus_size(rd), used=reserved_labels(rd))
        agreement = None
        if count:
            analysis = shard_curve(config.selection, shard["id"], new["label"], shard_scores)
            chosen = eyes_off_positions(analysis.order, analysis.elbow_index, ~gaps, count, config.seed)
            answers = annotator.annotate(pair_texts(rd, shard["id"].to_numpy()[chosen]), 0)
            human = np.array([answers[i] for i in shard["id"].to_numpy()[chosen]], dtype=object)
            agreement = float(np.mean(human == new["label"].to_numpy()[chosen]))
            new = with_answers(new, chosen, human, 0)
            if agreement < a.eyes_off_warn_below:
                log.warning("EYES-OFF VALIDATION FAILED: humans agree with only %.0f%% of %d high-confidence AI labels "
                            "(threshold %.0f%%). The judge, its prompt or its criteria do not match your preferences; "
                            "revise them before spending the annotation budget.", 100 * agreement, count,
                            100 * a.eyes_off_warn_below)
        atomic_write_parquet(rd.path(*path), new)
        return {"filled": int(gaps.sum()), "asked": count, "eyes_off_agreement": agreement,
                "batch_was_wrong": 0 if agreement is None else int(round((1 - agreement) * count))}

    return once(rd, "iter_0/validate", compute, read_parquet(rd, *path))


def reserved_labels(rd: RunDir) -> int:
    """Human labels set aside from the budget before the targeted ones (the audit's, ``prepare`` decides)."""
    return int(rd.info("prepare").get("audit_reserved", 0))


def features_step(rd: RunDir, backend, pairs: pd.DataFrame) -> None:
    """The features of every pair, written once (``data/features-<key>/``, in the run's mirror when it has one:
    Ray's workers write and read it) where the reward model reads frozen features and the run is too large for
    this process (:func:`~rlthf.run.corpus.beyond_driver`): every later training and scoring pass reads its
    pairs' features by id, where it would join the embedding cache on the texts again. A smaller run fills the
    embedding cache with the texts of the shard and the test set in one pass instead: training and scoring would
    each embed the texts new to them, loading the backbone once a pass."""
    name = features_name(backend)
    if name is None:
        return
    if not beyond_driver(len(pairs)):
        looped_over = pairs["in_shard"].to_numpy() | (pairs["split"] == "test").to_numpy()
        backend.embeddings(pair_texts(rd, pairs["id"][looped_over]))
        return

    def compute() -> dict:
        backend.featurize(texts_dataset(rd), rd.shared(*name), count=len(pairs))
        return {"pairs": len(pairs), "path": "/".join(name)}

    once(rd, "features", compute, lambda: None)


def features_name(backend) -> tuple[str, ...] | None:
    """The run's folder of pairs' features for ``backend`` (one that reads frozen features), else None."""
    return ("data", f"features-{backend.features.cache_key()}") if hasattr(backend, "featurize") else None


def reward_rows(rd: RunDir, backend, rows: pd.DataFrame):
    """``rows`` (an ``id`` and any other columns) as the Ray Dataset ``backend`` trains on or scores, and the
    keywords that tell it what it got: their features where :func:`features_step` wrote them, else their texts."""
    name = features_name(backend)
    if name is None or not rd.done("features"):
        return pairs_dataset(rd, rows), {}
    return pairs_dataset(rd, rows, rd.shared(*name)), {"count": len(rows), "embedded": True}


def train_step(rd: RunDir, k: int, config: RLTHFConfig, backend, train_rows: pd.DataFrame) -> Path:
    """Reward model k on ``train_rows`` (``id, label``; repeats allowed), their texts read from the run."""
    final = rd.path(*iteration_path(k, "checkpoint"))

    def compute() -> dict:
        # row: the rows' order, which a training run that streams its rows restores
        dataset, what = reward_rows(rd, backend, train_rows[["id", "label"]].assign(row=np.arange(len(train_rows))))
        with replace_dir_when_done(final) as partial:
            backend.train(dataset, partial, seed=config.seed + k, **what)
        return {"rows": len(train_rows), "pairs": int(train_rows["id"].nunique())}

    return once(rd, f"iter_{k}/train", compute, lambda: final)


def score_pairs(backend, checkpoint: Path, pairs, ids, **what) -> pd.DataFrame:
    """``id, reward_a, reward_b`` under ``checkpoint`` of the pairs of the Ray Dataset ``pairs``, in the order of
    ``ids`` (each must be scored); ``what``: the backend's keywords from :func:`reward_rows`. The scores stay
    Arrow until they are put in order: a million pairs' ids as Python strings would cost hundreds of MB."""
    import pyarrow as pa
    import pyarrow.compute as pc

    batches = list(backend.score(pairs, checkpoint, **what).iter_batches(batch_size=None, batch_format="pyarrow"))
    scored = pa.concat_tables(batches) if batches else None
    ids = pd.Series(ids).reset_index(drop=True)
    wanted = pa_strings(ids)
    position = pc.index_in(wanted, value_set=scored["id"]) if scored is not None else pa.nulls(len(ids), pa.int32())
    if position.null_count:
        raise RuntimeError(f"scoring lost pair {ids[int(pc.index(pc.is_null(position), True).as_py())]!r}")
    taken = scored.take(position) if len(ids) else None
    return pd.DataFrame({"id": ids, **{column: taken[column].to_numpy() if taken is not None else np.zeros(0)
                                       for column in ("reward_a", "reward_b")}})


def score_frame(rd: RunDir, backend, checkpoint: Path, pairs: pd.DataFrame) -> pd.DataFrame:
    """:func:`score_pairs` of the run's pairs in ``pairs`` (what the reward model reads of them read from the
    run directory)."""
    dataset, what = reward_rows(rd, backend, pairs[["id"]])
    return score_pairs(backend, checkpoint, dataset, pairs["id"], **what)


def reward_margin_a(scores: pd.DataFrame) -> np.ndarray:
    """r(a) - r(b) of each scored pair (``reward_a, reward_b``)."""
    return (scores["reward_a"] - scores["reward_b"]).to_numpy(dtype=float)


def score_step(rd: RunDir, k: int, backend, checkpoint: Path, shard: pd.DataFrame, test: pd.DataFrame) -> dict:
    """Rewards of model k on every shard pair (for the next curve) and every test pair (for its accuracy)."""
    parts = {name: iteration_path(k, f"scores_{name}.parquet") for name in ("shard", "test")}

    def compute() -> None:
        for name, pairs in (("shard", shard), ("test", test)):
            atomic_write_parquet(rd.path(*parts[name]), score_frame(rd, backend, checkpoint, pairs))

    return once(rd, f"iter_{k}/score", compute, lambda: {name: pd.read_parquet(rd.path(*p)) for name, p in parts.items()})


def shard_curve(s: SelectionConfig, ids: pd.Series, labels: pd.Series, scores: pd.DataFrame):
    """The reward distribution curve of the shard: each pair's margin under its working label, analysed."""
    margins = label_sign(labels) * reward_margin_a(scores)
    return analyze_curve(margins, smoothing=s.smoothing, steepness_factor=s.steepness_factor,
                         min_points=s.min_points, knee_detector=s.knee_detector, ids=ids.to_numpy())


def batch_size(config: RLTHFConfig, k: int, shard_pairs: int, corpus_pairs: int, used: int) -> int:
    """Iteration k's human batch: ``selection.annotation_fraction`` of the shard, or with ``spread_budget`` what
    is left of the budget over the iterations left; never past the budget."""
    s, budget = config.selection, config.annotation.budget
    left = budget_labels(budget, corpus_pairs)
    if s.spread_budget and left is not None:
        wanted = -(-max(0, left - used) // (s.iterations - k + 1))
    else:
        wanted = annotation_batch_size(shard_pairs, s.annotation_fraction)
    return cap_to_budget(wanted, budget, corpus_size=corpus_pairs, used=used)


def iteration_selection(s: SelectionConfig, k: int, analysis, human: np.ndarray, batch: int, order=None,
                        trainable=None):
    """Iteration k's flips, human batch and training set (paper 3.2.4-3.2.5) under the config's schedules."""
    return select_pairs(analysis, human, annotation_size=batch, amplification=schedule_value(s.amplification, k),
                        backoff=schedule_value(s.backoff, k), flip=s.flip, annotation_order=order,
                        trainable=trainable)


def select_step(rd: RunDir, k: int, config: RLTHFConfig, shard: pd.DataFrame, labels: pd.DataFrame,
                shard_scores: pd.DataFrame, ai_labels: pd.DataFrame) -> dict:
    """The curve of model k-1 under the working labels, and what to flip, annotate and train on."""
    path = rd.path(*iteration_path(k, "selection.json"))

    def compute() -> None:
        s = config.selection
        analysis = shard_curve(s, shard["id"], labels["label"], shard_scores)
        alpha, beta = schedule_value(s.amplification, k), schedule_value(s.backoff, k)
        human = (labels["label_source"] == "human").to_numpy()
        trainable = None if s.train_on_rm_labels else (labels["initial_source"] != "rm").to_numpy()
        batch = batch_size(config, k, len(shard), corpus_size(rd), used=int(human.sum()) + reserved_labels(rd))
        if s.selector == "random":
            selection = select_random(len(shard), human, annotation_size=batch, seed=config.seed + k,
                                      trainable=trainable)
        else:  # another selector only changes which pairs go to humans (core/selectors.py)
            embedded = s.selector in ("qbc", "confident_learning")  # their committees read the texts
            order = annotation_priority(config, k, with_texts(rd, shard) if embedded else shard, labels,
                                        shard_scores, analysis, ai_labels,
                                        cache_dir=cache_location(rd, config))
            selection = iteration_selection(s, k, analysis, human, batch, order, trainable)
        ids = shard["id"].to_numpy()
        atomic_write_json(path, {
            "analysis": analysis.summary(), "amplification": alpha, "backoff": beta, **selection.summary(),
            "flip": selection.flip.tolist(), "annotate": selection.annotate.tolist(), "train": selection.train.tolist(),
            "ids": {"flip": ids[selection.flip].tolist(), "annotate": ids[selection.annotate].tolist()}})
        correct = (labels["label"].to_numpy() == shard["truth"].to_numpy()) if shard["truth"].notna().all() else None
        plot_curve(analysis, correct, rd.path(*iteration_path(k, "curve.png")),
                   f"iteration {k}: reward model {k - 1} on the shard")

    return once(rd, f"iter_{k}/select", compute, lambda: load_selection(path))


def annotation_priority(config: RLTHFConfig, k: int, shard: pd.DataFrame, labels: pd.DataFrame,
                        shard_scores: pd.DataFrame, analysis, ai_labels: pd.DataFrame, *, cache_dir: str | Path):
    """The order of ``selection.selector`` (with ``selection.judge_signal``) over the shard's positions; None
    for RLTHF's own."""
    s = config.selection
    if s.selector == "rlthf":
        if s.judge_signal == "none":
            return None
        window = analysis.reflection_index - analysis.knee_index  # the region the curve targets
        priority = rlthf_order(analysis.order, analysis.reflection_index)
        if s.judge_signal == "least_confident_first":
            return least_confident_first(priority, column_by_id(ai_labels, "ai_judge_margin", shard["id"]), window)
        confidence = column_by_id(ai_labels, "ai_confidence", shard["id"])
        return suspicious_first(priority, np.isin(confidence, ("inconsistent", "single", "failed")), window)
    if s.selector == "oracle":
        return oracle_order(labels["label"], shard["truth"], hash_unit(config.seed + k, "oracle", shard["id"]))
    return selector_order(config, shard, labels["label"], shard_scores, cache_dir=cache_dir, seed=config.seed + k)


def selector_order(config: RLTHFConfig, shard: pd.DataFrame, labels, shard_scores: pd.DataFrame, *,
                   cache_dir: str | Path, seed: int) -> np.ndarray:
    """The priority of ``config.selection.selector`` (uncertainty, qbc or confident_learning) over the shard."""
    s = config.selection
    margin_a = reward_margin_a(shard_scores)
    if s.selector == "uncertainty":
        return uncertainty_order(margin_a)
    if s.selector not in ("qbc", "confident_learning"):
        raise ValueError(f"selection.selector {s.selector!r} has no annotation order here")
    from rlthf.reward.encoder_head import EncoderHeadReward
    from rlthf.reward.heads import fold_heads

    head_config = committee_reward_config(config)
    emb_a, emb_b = EncoderHeadReward(head_config, cache_dir).embeddings(shard)
    committee, out_of_fold = fold_heads(emb_a, emb_b, labels, folds=s.committee_size, config=head_config, seed=seed)
    if s.selector == "qbc":
        return committee_order(committee)
    return confident_learning_order(labels, 1.0 / (1.0 + np.exp(-out_of_fold)))


def load_selection(path: Path) -> dict:
    record = json.loads(path.read_text())
    for key in ("flip", "annotate", "train"):
        record[key] = np.asarray(record[key], dtype=np.int64)
    return record


def annotate_step(rd: RunDir, k: int, annotator: Annotator, shard: pd.DataFrame, labels: pd.DataFrame,
                  selection: dict) -> pd.DataFrame:
    """Flip the pairs past the reflection point, ask humans for the batch, and keep the new working labels."""
    path = iteration_path(k, "labels.parquet")

    def compute() -> dict:
        batch, flip = selection["annotate"], selection["flip"]
        answers = annotator.annotate(pair_texts(rd, shard["id"].to_numpy()[batch]), k) if len(batch) else {}
        ids = shard["id"].to_numpy()
        new = with_answers(with_flips(labels, flip), batch, [answers[i] for i in ids[batch]], k)
        atomic_write_parquet(rd.path(*path), new)
        truth, before, label = shard["truth"].to_numpy(), labels["label"].to_numpy(), new["label"].to_numpy()
        return {"asked": len(batch), "flips": len(flip), "flips_right": int((label[flip] == truth[flip]).sum()),
                "batch_was_wrong": int((before[batch] != truth[batch]).sum())}

    return once(rd, f"iter_{k}/annotate", compute, read_parquet(rd, *path))


def metrics_step(rd: RunDir, k: int, shard: pd.DataFrame, test: pd.DataFrame, labels: pd.DataFrame, scores: dict,
                 n_corpus: int) -> dict:
    """One row of the per-iteration table (also ``iterations/iter_k/metrics.json``)."""
    path = rd.path(*iteration_path(k, "metrics.json"))

    def compute() -> None:
        steps = {name: rd.info(f"iter_{k}/{name}") if rd.done(f"iter_{k}/{name}") else {}
                 for name in ("labels", "validate", "select", "annotate", "train", "score")}
        analysis = load_selection(rd.path(*iteration_path(k, "selection.json")))["analysis"] if k else {}
        atomic_write_json(path, metrics_row(k, shard, test, labels, scores, n_corpus, steps, analysis))

    return once(rd, f"iter_{k}/metrics", compute, lambda: json.loads(path.read_text()))


def metrics_row(k: int, shard: pd.DataFrame, test: pd.DataFrame, labels: pd.DataFrame, scores: dict,
                n_corpus: int, steps: dict, analysis: dict) -> dict:
    """Iteration k's accuracies and counts from its labels, its model's scores and its steps' records."""
    human = labels["label_source"].to_numpy() == "human"
    test_acc = preference_accuracy(scores["test"]["reward_a"], scores["test"]["reward_b"], test["truth"])
    curated = np.where(human, labels["label"], rm_labels(scores["shard"]["reward_a"], scores["shard"]["reward_b"]))
    asked_step = steps["validate"] if k == 0 else steps["annotate"]
    row = {
        "iteration": k,
        "human_labels": int(human.sum()),
        "human_pct_shard": 100 * human.mean(),
        "human_pct_corpus": 100 * human.sum() / n_corpus,
        "asked": asked_step.get("asked", 0),
        "batch_was_wrong": asked_step.get("batch_was_wrong", 0),
        "eyes_off_agreement": steps["validate"].get("eyes_off_agreement"),
        "ai_unlabelled": steps["validate"].get("filled", 0),
        "flips": steps["annotate"].get("flips", 0),
        "flips_right": steps["annotate"].get("flips_right", 0),
        "label_acc": label_accuracy(labels["label"], shard["truth"]),
        "rm_label_acc": label_accuracy(curated, shard["truth"]),
        "test_acc": test_acc,
        "test_acc_ci": list(wilson_interval(test_acc * len(test), len(test))),
        "test_pairs": len(test),
        "elbow_index": analysis.get("elbow_index"),
        "knee_index": analysis.get("knee_index"),
        "reflection_index": analysis.get("reflection_index"),
        "train_rows": steps["train"].get("rows"),
        "step_seconds": {name: round(info.get("seconds", 0.0), 2) for name, info in steps.items() if info},
    }
    row["wall_s"] = sum(row["step_seconds"].values())
    return row


def audit_step(rd: RunDir, config: RLTHFConfig, annotator: Annotator, corpus: pd.DataFrame,
               labels: pd.DataFrame, *, after_iteration: int | None = None) -> pd.DataFrame:
    """Humans label a seeded uniform sample of the corpus pairs that have no human label yet (``annotation.
    audit_fraction``, the labels ``prepare`` reserved): the evidence behind the curation and its estimates.
    ``after_iteration``: the loop's last iteration, recorded so that a resumed run with more iterations knows
    this step read older labels (:func:`forget_final_steps_before`)."""
    path = ("final", "audit.parquet")

    def compute() -> dict:
        human = set(labels["id"][labels["label_source"] == "human"])
        eligible = ~corpus["id"].isin(human).to_numpy()
        size = min(reserved_labels(rd), int(eligible.sum()))
        size = cap_to_budget(size, config.annotation.budget, corpus_size=corpus_size(rd), used=len(human))
        chosen = audit_sample(hash_unit(config.seed, "audit", corpus["id"]), eligible, size)
        requests = pair_texts(rd, corpus["id"].iloc[chosen])
        answers = annotator.annotate(requests, AUDIT_ITERATION) if size else {}
        atomic_write_parquet(rd.path(*path), pd.DataFrame({"id": requests["id"],
                                                           "label": [answers[i] for i in requests["id"]]}))
        return {"asked": size, **iteration_info(after_iteration)}

    return once(rd, "final/audit", compute, read_parquet(rd, *path))


def curate_step(rd: RunDir, config: RLTHFConfig, backend, checkpoint: Path, pairs: pd.DataFrame,
                labels: pd.DataFrame, ai_labels: pd.DataFrame, audit: pd.DataFrame, *,
                after_iteration: int | None = None) -> tuple[Path, dict]:
    """One label for every corpus pair (``curate.policy``), human labels kept: ``curated.parquet`` for DPO, and
    the audit's estimates of what it is worth in ``summary.json`` (``after_iteration`` as in :func:`audit_step`)."""
    path, summary_path = rd.path("curated.parquet"), rd.path("summary.json")

    def compute() -> dict:
        corpus = pairs[pairs["split"] == "train"].reset_index(drop=True)
        margin = reward_margin_a(score_frame(rd, backend, checkpoint, corpus))
        release_memory()  # (each stage's temporaries are a few copies of the corpus's ids: they should not stack)
        inputs = curation_inputs(corpus, labels, ai_labels, audit, config.curate.policy)
        release_memory()
        curated = curate(inputs["base"], margin, inputs["human"], inputs["audited"], policy=config.curate.policy,
                         base_source=inputs["source"], alpha=config.curate.alpha, folds=config.curate.folds,
                         seed=config.seed, bootstrap=config.curate.bootstrap)
        summary = {**audit_estimates(margin, inputs, curated), **run_summary(rd, corpus, curated, inputs, margin),
                   "ai_labels_source": config.ai_labels.source, "curation": curated.decision.summary(),
                   "checkpoint": str(checkpoint)}
        rows = pd.DataFrame({
            "id": corpus["id"], "label": curated.label, "label_source": curated.source,
            "reward_margin": margin * label_sign(curated.label), "in_shard": corpus["in_shard"].to_numpy(),
            **({"text_row": corpus["text_row"].to_numpy()} if "text_row" in corpus else {})})
        del corpus, margin, inputs, curated  # the file's writing holds its rows and a row group of texts alone
        release_memory()
        write_curated(rd, path, rows)
        atomic_write_json(summary_path, summary)
        return iteration_info(after_iteration)

    once(rd, "final/curate", compute, lambda: None)
    return path, json.loads(summary_path.read_text())


FINAL_STEPS = ("final/audit", "final/curate")


def iteration_info(after_iteration: int | None) -> dict:
    return {} if after_iteration is None else {"after_iteration": after_iteration}


def forget_final_steps_before(rd: RunDir, last_iteration: int) -> list[str]:
    """The final steps done after another iteration than ``last_iteration`` (a finished run resumed with another
    ``selection.iterations``) read other labels and another reward model: forget them, so they run again (the
    annotator serves the audit answers it already has), and return the steps forgotten. Steps recorded without
    their iteration are kept."""
    done = [step for step in FINAL_STEPS if rd.done(step)]
    if all(rd.info(step).get("after_iteration", last_iteration) == last_iteration for step in done):
        return []
    rd.forget(*done)  # curation reads the audit: both go, or neither
    return done


def curation_inputs(corpus: pd.DataFrame, labels: pd.DataFrame, ai_labels: pd.DataFrame, audit: pd.DataFrame,
                    policy: str) -> dict:
    """Per corpus pair: the base label and its source, the original AI label, the human label (targeted,
    eyes-off or audit) and the audit mask. The base label is the AI's; in the shard, under ``ai`` (and ``rm``),
    the working label with RLTHF's flips, under ``auto`` the initial label (the AI's, or model 0's where it gave
    none): there the audit alone decides where the reward model's label replaces it."""
    ids = corpus["id"]
    in_shard = has_id(ids, labels["id"])
    working = policy != "auto"
    label, label_source = ("label", "label_source") if working else ("ai_label", "initial_source")
    shard = columns_by_id(labels, {"label", "label_source", label, label_source}, ids[in_shard])
    ai = column_by_id(ai_labels, "ai_label", ids)
    base, source = ai.copy(), objects_full(len(ids), "ai")
    base[in_shard], source[in_shard] = shard[label], shard[label_source]
    human = np.full(len(ids), None, dtype=object)
    is_human = np.zeros(len(ids), dtype=bool)
    by_human = shard["label_source"] == "human"
    is_human[in_shard] = by_human
    human[is_human] = shard["label"][by_human]
    audited = has_id(ids, audit["id"])
    human[audited] = column_by_id(audit, "label", ids[audited])
    base[is_human], source[is_human] = None, "ai"  # a human label stands in the curated set whatever the policy
    return {"base": base, "source": source, "ai": ai, "human": human, "audited": audited, "in_shard": in_shard}


def audit_estimates(margin: np.ndarray, inputs: dict, curated: CuratedLabels) -> dict:
    """The audit's estimates, with 95% intervals, of the AI labels (where the AI gave one), the final reward
    model (on the pairs without a targeted human label) and the curated set (each audit pair read with the label
    the rule of its fold gives it, a rule fitted without it; the interval widened by the curation's bootstrap)."""
    human, audited, ai = inputs["human"], inputs["audited"], inputs["ai"]
    if not audited.any():
        return {"audit_pairs": 0}
    has_ai = pd.notna(ai)
    targeted = pd.notna(human) & ~audited
    would_be = curated.rule_label
    estimates = {
        "ai": estimate_accuracy(ai[has_ai], human[has_ai], audited[has_ai]),
        "rm": estimate_accuracy(rm_labels(margin, 0.0)[~targeted], human[~targeted], audited[~targeted]),
        "curated": estimate_accuracy(curated.label, human, audited, audit_labels=would_be,
                                     audit_errors=curated.audit_errors),
        # on the same pairs as the AI's estimate: the comparison behind the warning (the bootstrap's errors are
        # the whole corpus's; the pairs without an AI label are few and labelled by the RM whatever the folds)
        "curated_where_ai": estimate_accuracy(curated.label[has_ai], human[has_ai], audited[has_ai],
                                              audit_labels=would_be[has_ai], audit_errors=curated.audit_errors),
    }
    return {"audit_pairs": int(audited.sum()), "ai_labelled_pairs": int(has_ai.sum()),
            "estimate": {name: e.summary() for name, e in estimates.items()}}


def run_summary(rd: RunDir, corpus: pd.DataFrame, curated, inputs: dict, margin: np.ndarray) -> dict:
    """Counts, and the accuracies against the ground truth where the data has one (a study, not a user's run)."""
    is_human = curated.source == "human"
    truth = numpy_values(corpus["truth"])
    known = pd.notna(truth)
    has_ai = known & pd.notna(inputs["ai"])
    return {
        "curated_pairs": len(corpus),
        "human_labels": int(is_human.sum()),
        "human_pct_corpus": 100 * float(is_human.mean()),
        "audit_labels": int(inputs["audited"].sum()),
        "label_sources": {k: int(v) for k, v in zip(*np.unique(curated.source.astype(str), return_counts=True))},
        "truth_flipped_fraction": rd.info("prepare")["truth_flipped_fraction"],
        "curated_label_acc": label_accuracy(curated.label[known], truth[known]),
        "ai_label_acc_corpus": label_accuracy(inputs["ai"][has_ai], truth[has_ai]),
        "curated_label_acc_where_ai": label_accuracy(curated.label[has_ai], truth[has_ai]),
        "rm_label_acc_corpus": label_accuracy(rm_labels(margin, 0.0)[known], truth[known]),
    }
