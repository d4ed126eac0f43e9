"""Frozen-backbone embeddings of prompt + response, computed once by a Ray Data actor pool and cached on disk.

The cache is keyed by (model, max_length) and by the sha256 of the text, so the same text is never embedded
twice: not across iterations, not across the shard, test set and corpus, and not across runs that share
``reward.cache_dir``. New embeddings are written in parts as they arrive, so a crash loses at most one part.
"""
from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from rlthf.models import resolve_model
from rlthf.reward.common import reward_text
from rlthf.rundir import atomic_write_parquet

log = logging.getLogger("rlthf")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class Embedder:
    """Ray Data callable class: mean-pooled, L2-normalised embeddings (all-MiniLM-L6-v2's own pooling).

    The model loads once per actor in ``__init__``; ``__call__`` takes ``{"text_hash", "text"}`` and returns
    ``{"text_hash", "embedding"}``. It works on a plain dict batch too, without Ray.
    """

    def __init__(self, model: str, max_length: int, num_threads: int = 1) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(num_threads)
        path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.truncation_side = "left"  # keep the response and the latest turns
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length = max_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        enc = self.tokenizer(list(batch["text"]), truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return {"text_hash": np.asarray(batch["text_hash"]), "embedding": pooled.numpy().astype(np.float32)}


class EmbeddingCache:
    """Embeddings of one (model, max_length) on disk, as parquet parts under ``root/<key>/``."""

    def __init__(self, root: str | Path, model: str, max_length: int) -> None:
        key = hashlib.sha256(f"{model}|{max_length}".encode()).hexdigest()[:12]
        self.dir = Path(root) / f"embeddings-{key}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model, self.max_length = model, max_length
        self._index: dict[str, int] = {}
        self._rows: list[np.ndarray] = []
        for part in sorted(self.dir.glob("part-*.parquet")):
            df = pd.read_parquet(part)
            self._add(df["text_hash"].tolist(), np.stack(df["embedding"].to_numpy()))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def _add(self, hashes: list[str], vectors: np.ndarray) -> None:
        for h, v in zip(hashes, vectors):
            if h not in self._index:
                self._index[h] = len(self._rows)
                self._rows.append(np.asarray(v, dtype=np.float32))

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Keep new embeddings and write them to a new part at once."""
        new = [(h, v) for h, v in zip(hashes, vectors) if h not in self._index]
        if not new:
            return
        df = pd.DataFrame({"text_hash": [h for h, _ in new], "embedding": [v.tolist() for _, v in new]})
        atomic_write_parquet(self.dir / f"part-{uuid.uuid4().hex}.parquet", df)
        self._add([h for h, _ in new], np.stack([v for _, v in new]))

    def get(self, hashes: Iterable[str]) -> np.ndarray:
        return np.stack([self._rows[self._index[h]] for h in hashes])


def embed_missing(cache: EmbeddingCache, texts: dict[str, str], *, batch_size: int, concurrency: int,
                  cpus_per_actor: int, flush_every: int = 512) -> int:
    """Embed the texts (hash -> text) not yet in ``cache`` through a Ray Data actor pool; returns how many."""
    # sorted by length, a batch pads to texts of about its own size
    missing = sorted((h for h in texts if h not in cache), key=lambda h: len(texts[h]))
    if not missing:
        return 0
    import ray

    log.info("embedding %d new texts with %s", len(missing), cache.model)
    frame = pd.DataFrame({"text_hash": missing, "text": [texts[h] for h in missing]})
    # one block per flush, so results stream back (and reach the cache) while the rest is still embedding
    ds = ray.data.from_pandas([frame.iloc[i:i + flush_every] for i in range(0, len(frame), flush_every)])
    ds = ds.map_batches(
        Embedder,
        fn_constructor_kwargs={"model": cache.model, "max_length": cache.max_length, "num_threads": cpus_per_actor},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=cpus_per_actor,
        batch_format="numpy",
    )
    pending_h: list[str] = []
    pending_v: list[np.ndarray] = []
    from tqdm.auto import tqdm

    with tqdm(total=len(missing), desc="embed", unit="text", disable=os.environ.get("RLTHF_PROGRESS") == "0") as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            pending_h.extend(batch["text_hash"].tolist())
            pending_v.extend(batch["embedding"])
            bar.update(len(batch["text_hash"]))
            if len(pending_h) >= flush_every:
                cache.add(pending_h, np.stack(pending_v))
                pending_h, pending_v = [], []
    if pending_h:
        cache.add(pending_h, np.stack(pending_v))
    return len(missing)


def pair_embeddings(cache: EmbeddingCache, pairs: pd.DataFrame, *, batch_size: int = 32, concurrency: int = 1,
                    cpus_per_actor: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of (prompt + response_a) and (prompt + response_b) for every pair, embedding what is missing."""
    text_a = [reward_text(p, r) for p, r in zip(pairs["prompt"], pairs["response_a"])]
    text_b = [reward_text(p, r) for p, r in zip(pairs["prompt"], pairs["response_b"])]
    hash_a = [text_hash(t) for t in text_a]
    hash_b = [text_hash(t) for t in text_b]
    texts = dict(zip(hash_a, text_a)) | dict(zip(hash_b, text_b))
    embed_missing(cache, texts, batch_size=batch_size, concurrency=concurrency, cpus_per_actor=cpus_per_actor)
    return cache.get(hash_a), cache.get(hash_b)
