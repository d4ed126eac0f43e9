"""RLTHF's steps as functions on ``ray.data.Dataset``: embed them in a larger Ray pipeline.

Each step takes a Dataset of preference pairs (``id, prompt, response_a, response_b`` and, where a step needs
them, ``label`` and ``reward_a, reward_b``) and one typed config section, and returns a Dataset (or a plain
result). The steps wrap what ``rlthf run`` runs, they do not reimplement it:

==========================  ===============================================  ========================================
step                        wraps                                            returns
==========================  ===============================================  ========================================
``load_pairs(path)``        :func:`rlthf.data.load_pairs`                     pairs (``human_label`` where known)
``label(pairs, judge)``     :func:`rlthf.judges.labeling.label_pairs`          pairs + ``label, confidence``
``train_reward_model``      the reward backends' ``train`` (Ray Train: lora)  the checkpoint folder
``score(pairs, ckpt, rw)``  the reward backends' ``score`` (Ray Data actors)   ``id, reward_a, reward_b``
``attach_rewards``          a join on ``id``                                  pairs + ``reward_a, reward_b``
``analyze(scored, sel)``    :func:`rlthf.core.curve.analyze_curve`            a :class:`CurveAnalysis`
``select(scored, ...)``     :func:`rlthf.core.selection.select_pairs`         pairs + ``flip, annotate, train_copies``
``run(config)``             :func:`rlthf.run.driver.run`                      a :class:`RunResult`
==========================  ===============================================  ========================================

Labelling streams (the driver keeps ids and labels); curve analysis needs every pair's margin at once (a sorted
curve) and collects ids, labels and rewards on the driver; ``attach_rewards`` and ``select`` collect their whole
input there (``rlthf run`` does not: it streams a large corpus); training reads its input once; scoring streams.
Ray is started (or joined through ``RAY_ADDRESS``) by the first step that needs it unless the caller already did.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from rlthf.config import JudgeConfig, RewardConfig, SelectionConfig
from rlthf.core.curve import CurveAnalysis
from rlthf.core.labels import PAIR_TEXT, checked_labels, flip_labels, objects_full
from rlthf.core.selection import annotation_batch_size
from rlthf.data import load_pairs
from rlthf.reward.backends import make_reward_backend
from rlthf.run.corpus import attach_rows
from rlthf.run.driver import RunResult, run
from rlthf.run.steps import iteration_selection, shard_curve
from rlthf.rundir import atomic_write_json

__all__ = ["load_pairs", "label", "train_reward_model", "score", "attach_rewards", "analyze", "select", "run",
           "RunResult"]



def _columns(ds, columns: list[str], step: str) -> list[str]:
    """The dataset's column names; an error naming the step when one of ``columns`` is not among them."""
    names = list(ds.schema().names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"rlthf.{step}: the dataset lacks column(s) {missing}; it has {names}")
    return names


def _frame(ds, columns: list[str], step: str, *, only: bool = False):
    """``ds`` collected here (``only`` its ``columns``), its ids checked."""
    _columns(ds, columns, step)
    df = (ds.select_columns(columns) if only else ds).to_pandas()
    if not df["id"].is_unique:
        raise ValueError(f"rlthf.{step}: pair id {df['id'][df['id'].duplicated()].iloc[0]!r} occurs twice")
    return df


def label(pairs, config: JudgeConfig, *, cache_path: str | Path, report_path: str | Path | None = None):
    """The LLM judge labels every pair (paper 3.1); returns the pairs with ``label`` ('a', 'b' or None when the
    judge gave no usable verdict) and ``confidence``, each pair once (in the order Ray Data yields them: join on
    ``id`` where order matters).

    ``cache_path`` is the verdict cache (a folder of Parquet parts, a path or a URI the workers reach): a rerun
    asks only for verdicts it lacks. The pairs stream through Ray Data; the driver holds their ids and labels.
    The API key is read from the environment variable ``config.api_key_env`` inside the judge actors, so it is
    never an argument here and never part of a Ray record. ``report_path``: also write the judge report
    (accuracy against ``human_label`` where present, position consistency, tokens, cost) there as JSON.
    """
    import pyarrow as pa

    from rlthf.judges.labeling import label_pairs

    names = _columns(pairs, list(PAIR_TEXT), "label")
    init_ray_default()
    # read several times (ids, the requests, the labels' rows, the output): kept in Ray's object store, so a
    # costly or random upstream pipeline runs once
    pairs = pairs.materialize()
    ids = pairs.select_columns(["id"]).to_pandas()["id"].astype(str)
    if ids.duplicated().any():
        raise ValueError(f"rlthf.label: pair id {ids[ids.duplicated()].iloc[0]!r} occurs twice")
    judged = pairs.select_columns([*PAIR_TEXT, *(["human_label"] if "human_label" in names else [])])
    labels, report = label_pairs(judged, config, cache_path, pair_count=len(ids))
    if report_path is not None:
        atomic_write_json(report_path, report)
    kept = [c for c in names if c not in ("label", "confidence")]
    table = pa.Table.from_pandas(labels.astype({"id": str}), preserve_index=False)
    return pairs.select_columns(kept).map_batches(attach_rows, fn_kwargs={"rows": table}, batch_format="pandas")


def train_reward_model(pairs, config: RewardConfig, out_dir: str | Path, *, seed: int = 0,
                       cache_dir: str | Path | None = None) -> Path:
    """A Bradley-Terry reward model on the labelled pairs (``label`` 'a' or 'b' on every row; repeat a row to
    weight it). ``config.backend`` lora trains on Ray Train (``num_workers``, ``max_failures``,
    ``storage_path``); encoder_head trains a head on cached embeddings (``cache_dir``, default
    ``out_dir/../cache``). Returns the checkpoint folder for :func:`score`."""
    out_dir = Path(out_dir)
    init_ray_default()
    backend = make_reward_backend(config, cache_dir or out_dir.parent / "cache")
    return Path(backend.train(pairs.select_columns([*PAIR_TEXT, "label"]), out_dir, seed=seed))


def score(pairs, checkpoint: str | Path, config: RewardConfig, *, cache_dir: str | Path | None = None):
    """Rewards of both responses of every pair under ``checkpoint``: a Dataset of ``id, reward_a, reward_b``
    (join it to the pairs on ``id``). Scoring runs in Ray Data actors that load the model once; Ray Data restarts
    an actor that dies and retries its batch."""
    init_ray_default()
    backend = make_reward_backend(config, cache_dir or Path(checkpoint).parent / "cache")
    return backend.score(pairs.select_columns(list(PAIR_TEXT)), Path(checkpoint))


def attach_rewards(pairs, scores):
    """``pairs`` with the ``reward_a, reward_b`` of :func:`score` joined on ``id`` (every pair exactly once; a pair
    without rewards is an error). Collected on the driver: Ray Data's own join needs polars."""
    import ray.data

    df = _frame(pairs, ["id"], "attach_rewards").drop(columns=["reward_a", "reward_b"], errors="ignore")
    rewards = _frame(scores, ["id", "reward_a", "reward_b"], "attach_rewards")
    out = df.merge(rewards[["id", "reward_a", "reward_b"]], on="id", how="left", validate="one_to_one")
    if out["reward_a"].isna().any():
        raise ValueError(f"rlthf.attach_rewards: pair {out['id'][out['reward_a'].isna()].iloc[0]!r} has no rewards")
    return ray.data.from_pandas(out)


def analyze(scored, config: Optional[SelectionConfig] = None) -> CurveAnalysis:
    """The reward distribution curve (paper 3.2.2) of pairs with ``id, label, reward_a, reward_b``: each pair's
    margin under its working label, sorted, with its elbow, knee and reflection point."""
    return _curve(_frame(scored, ["id", "label", "reward_a", "reward_b"], "analyze", only=True),
                  config or SelectionConfig(), "analyze")


def _curve(df, config: SelectionConfig, step: str) -> CurveAnalysis:
    try:
        checked_labels(df["label"])  # a pair without a working label has no margin: drop or label it first
    except ValueError as err:
        raise ValueError(f"rlthf.{step}: {err}") from None
    return shard_curve(config, df["id"], df["label"], df)


def select(scored, config: Optional[SelectionConfig] = None, *, iteration: int = 1):
    """One RLTHF selection (paper 3.2.4-3.2.5) on pairs with ``id, label, reward_a, reward_b`` (and
    ``label_source``: 'human' marks pairs a human already labelled, 'rm' those a reward model labelled, which
    stay out of training under ``config.train_on_rm_labels=False``).

    Returns the pairs, in the same order, with ``flip`` (the working label is flipped: past the reflection
    point), ``annotate`` (send to humans now: ``config.annotation_fraction`` of the pairs) and ``train_copies``
    (copies in the next training set: alpha for human labels, 0 for pairs ranked past the back-off cutoff);
    ``label`` already carries the flips.
    """
    import ray.data

    config = config or SelectionConfig()
    if config.selector != "rlthf":
        raise ValueError(f"rlthf.select implements selection.selector 'rlthf'; got {config.selector!r} "
                         "(the other selectors run inside `rlthf run`)")
    df = _frame(scored, ["id", "label", "reward_a", "reward_b"], "select")
    analysis = _curve(df, config, "select")
    source = df["label_source"].to_numpy() if "label_source" in df else objects_full(len(df), "ai")
    trainable = None if config.train_on_rm_labels else source != "rm"
    batch = annotation_batch_size(len(df), config.annotation_fraction)
    selection = iteration_selection(config, iteration, analysis, source == "human", batch, trainable=trainable)
    out = df.copy()
    flip = np.zeros(len(df), bool)
    flip[selection.flip] = True
    annotate = np.zeros(len(df), bool)
    annotate[selection.annotate] = True
    labels = df["label"].to_numpy().astype(object)
    labels[flip] = flip_labels(labels[flip])
    out["label"] = labels
    out["flip"], out["annotate"] = flip, annotate
    out["train_copies"] = np.bincount(selection.train, minlength=len(df))
    return ray.data.from_pandas(out)


def init_ray_default() -> None:
    """Join ``RAY_ADDRESS`` or start a local Ray, unless the caller's pipeline already started one."""
    from rlthf.config import RayConfig
    from rlthf.cluster.session import init_ray

    init_ray(RayConfig())
