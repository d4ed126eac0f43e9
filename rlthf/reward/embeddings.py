"""Frozen-backbone embeddings of prompt + response, computed once by a Ray Data actor pool and cached on disk.

What a text's feature vector is comes from a :class:`FeatureSpec`: the backbone (MiniLM, or a decoder such as
SmolLM2 from a GGUF file), which hidden layers are pooled (mean or last token) and concatenated, whether each is
L2-normalised, and how prompt + response is cut to ``max_length``. The backbone runs only up to the deepest
layer asked for.

The cache is keyed by the spec and by the sha256 of the text, so the same text is never embedded twice: not
across iterations, not across the shard, test set and corpus, and not across runs that share
``reward.cache_dir``. New embeddings are written in parts as they arrive, so a crash loses at most one part.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from rlthf.cluster.actors import join_partitions
from rlthf.models import model_source
from rlthf.reward.common import reward_text
from rlthf.rundir import filesystem_and_path, join_location, parquet_parts, replace_dir_when_done, write_parquet_part

log = logging.getLogger("rlthf")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class FeatureSpec:
    """How a text becomes a feature vector; the ``encoder_head`` fields of :class:`~rlthf.config.RewardConfig`
    (whose help is their documentation). The defaults are all-MiniLM-L6-v2's own sentence embedding."""

    model: str
    max_length: int
    gguf_file: str | None = None
    layers: tuple[int | str, ...] = ("last",)
    pooling: str = "mean"
    normalize: bool = True
    truncation: str = "left"

    def __post_init__(self) -> None:
        # -1 and 'last' are one layer: one spelling keeps one cache (and the default key of older caches)
        object.__setattr__(self, "layers", tuple("last" if x == -1 else x for x in self.layers))
        if self.pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {self.pooling!r}")
        if self.truncation not in ("left", "keep_response"):
            raise ValueError(f"truncation must be 'left' or 'keep_response', got {self.truncation!r}")

    @classmethod
    def from_config(cls, config) -> FeatureSpec:
        return cls(model=config.model, max_length=config.max_length, gguf_file=config.gguf_file,
                   layers=tuple(config.layers), pooling=config.pooling, normalize=config.normalize,
                   truncation=config.truncation)

    @property
    def is_default(self) -> bool:
        """Whether the features are the mean-pooled, normalised last layer, cut from the left (export can
        rebuild those with stock transformers)."""
        return self == FeatureSpec(self.model, self.max_length)

    def cache_key(self) -> str:
        described = f"{self.model}|{self.max_length}"
        if not self.is_default:  # the default spec keeps the key it had before these options existed
            described += (f"|gguf={self.gguf_file}|layers={list(self.layers)}|pooling={self.pooling}"
                          f"|normalize={self.normalize}|truncation={self.truncation}")
        return hashlib.sha256(described.encode()).hexdigest()[:12]

    def text_key(self, prompt: str, response: str) -> str:
        """The cache key of one text. keep_response cuts at the prompt/response boundary, so the boundary is
        part of the key; left truncation reads only the joined text (and keeps the key older caches have)."""
        if self.truncation == "keep_response":
            return text_hash(f"{len(prompt)}:{reward_text(prompt, response)}")
        return text_hash(reward_text(prompt, response))


def hidden_state_index(layer: int | str, num_layers: int) -> int:
    """The index into transformers' ``hidden_states`` (``num_layers + 1`` entries) that ``layer`` names."""
    index = {"last": num_layers, "middle": num_layers // 2}.get(layer, layer)
    if not isinstance(index, int) or isinstance(index, bool):
        raise ValueError(f"layer must be an integer, 'middle' or 'last', got {layer!r}")
    if index < 0:
        index += num_layers + 1
    if not 0 <= index <= num_layers:
        raise ValueError(f"layer {layer!r} is out of range for a model of {num_layers} layers")
    return index


def keep_tokens(offsets, special, prompt_chars: int, budget: int, truncation: str) -> list[int]:
    """Positions of the tokens kept of one tokenized text: all its special tokens and ``budget`` content tokens.

    ``offsets`` are each token's (start, end) characters and ``special`` its special-tokens flag. A content token
    belongs to the response when it ends after ``prompt_chars``. left: the last ``budget`` content tokens;
    keep_response: the response's first ``budget`` tokens, then as many of the prompt's last tokens as fit.
    """
    content = [i for i, s in enumerate(special) if not s]
    if len(content) <= budget:
        return list(range(len(special)))
    if truncation == "left":
        kept = content[len(content) - budget:]
    else:
        response = [i for i in content if offsets[i][1] > prompt_chars][:budget]
        prompt = [i for i in content if offsets[i][1] <= prompt_chars]
        kept = prompt[len(prompt) - (budget - len(response)):] + response
    kept_set = set(kept)
    return [i for i in range(len(special)) if special[i] or i in kept_set]


# Cut from the left, a text keeps its last tokens, so the tokenizer need only read its tail: this many characters
# per token kept, from a word boundary, and the tail must yield this many tokens beyond those kept (the first
# word of a tail may tokenize otherwise than in the whole text); a tail that yields fewer is read whole.
TAIL_CHARS_PER_TOKEN = 8
TAIL_MARGIN_TOKENS = 8


def text_tail(text: str, chars: int) -> str:
    """The end of ``text`` from the first whitespace of its last ``chars`` characters (all of a shorter text,
    or of one without whitespace there)."""
    if len(text) <= chars:
        return text
    start = len(text) - chars
    boundary = next((i for i in range(start, len(text)) if text[i].isspace()), None)
    return text if boundary is None else text[boundary:]


def load_backbone(spec: FeatureSpec):
    """The tokenizer, the base model (no LM head) in eval mode and its number of layers."""
    from transformers import AutoModel, AutoTokenizer

    path, kwargs = model_source(spec.model, spec.gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    tokenizer.truncation_side = "left"  # the one cut a caller of the tokenizer gets: keep the response's end
    model = AutoModel.from_pretrained(path, **kwargs).eval()
    return tokenizer, model, int(model.config.num_hidden_layers)


def truncate_layers(model, depth: int) -> None:
    """Drop the blocks after ``depth`` so a forward pass stops there; ``hidden_states[depth]`` is then what the
    full model gives at that index. A decoder's final norm (applied only to the last hidden state) is dropped
    too when the last block is."""
    import torch.nn as nn

    for blocks_path, norm_name in (("layers", "norm"), ("encoder.layer", None), ("h", "ln_f")):
        owner_path, _, blocks_name = blocks_path.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        blocks = getattr(owner, blocks_name, None)
        if isinstance(blocks, nn.ModuleList):
            break
    else:
        raise ValueError(f"{type(model).__name__}: cannot find its blocks to run only {depth} of them")
    if depth == len(blocks):
        return
    setattr(owner, blocks_name, blocks[:depth])
    if norm_name and hasattr(model, norm_name):
        setattr(model, norm_name, nn.Identity())
    model.config.num_hidden_layers = depth  # some versions loop over layers[:config.num_hidden_layers]


class Embedder:
    """Ray Data callable class: the feature vectors of texts under a :class:`FeatureSpec`.

    The backbone loads once per actor in ``__init__`` (on ``device``: 'cpu', 'cuda'), cut after the deepest
    layer the spec pools.
    ``__call__`` takes ``{"text_hash", "text"}`` and, for ``keep_response``, ``"prompt_chars"`` (where the
    response starts in ``text``); it returns ``{"text_hash", "embedding"}``, the pooled layers side by side in
    float32. It works on a plain dict batch too, without Ray.
    """

    def __init__(self, spec: FeatureSpec, num_threads: int = 1, device: str = "cpu") -> None:
        import torch

        torch.set_num_threads(num_threads)
        self.spec = spec
        self.device = torch.device(device)
        self.tokenizer, self.model, num_layers = load_backbone(spec)
        self.model.to(self.device)
        self.tokenizer.model_max_length = 1 << 30  # texts are cut here, after tokenizing them whole
        self.layer_indices = [hidden_state_index(layer, num_layers) for layer in spec.layers]
        truncate_layers(self.model, max(self.layer_indices))
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def token_ids(self, texts: list[str], prompt_chars: list[int]) -> list[list[int]]:
        """Each text's token ids (with the tokenizer's special tokens) cut to ``max_length``. Cut from the left, a
        long text is tokenized from its tail (:func:`text_tail`): the same ids, for a fraction of the work."""
        if self.spec.truncation != "left":
            return self.cut(texts, prompt_chars)
        tails = [text_tail(text, TAIL_CHARS_PER_TOKEN * self.spec.max_length) for text in texts]
        out = self.cut(tails, prompt_chars, margin=TAIL_MARGIN_TOKENS)
        short = [i for i, ids in enumerate(out) if ids is None]
        for i, ids in zip(short, self.cut([texts[i] for i in short], [prompt_chars[i] for i in short])):
            out[i] = ids
        return out

    def cut(self, texts: list[str], prompt_chars: list[int], margin: int | None = None) -> list[list[int] | None]:
        """Tokenize ``texts`` whole and cut each to ``max_length``; with ``margin``, None for a text that has
        fewer than the budget plus ``margin`` content tokens (a tail too short to be cut from)."""
        if not texts:
            return []
        enc = self.tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True,
                             return_special_tokens_mask=True)
        out: list[list[int] | None] = []
        for ids, offsets, special, chars in zip(enc["input_ids"], enc["offset_mapping"],
                                                enc["special_tokens_mask"], prompt_chars):
            budget = self.spec.max_length - sum(special)
            if margin is not None and len(special) - sum(special) < budget + margin:
                out.append(None)
                continue
            out.append([ids[i] for i in keep_tokens(offsets, special, chars, budget, self.spec.truncation)])
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        texts = [str(t) for t in batch["text"]]
        prompt_chars = batch.get("prompt_chars", np.zeros(len(texts), dtype=int))
        sequences = self.token_ids(texts, [int(c) for c in prompt_chars])
        # right padding: a causal model's real tokens never see the pads, and positions count from 0 as unpadded
        lengths = torch.tensor([len(s) for s in sequences])
        input_ids = torch.full((len(sequences), int(lengths.max())), self.pad_token_id, dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        with torch.inference_mode():
            input_ids, attention_mask, lengths = (t.to(self.device) for t in (input_ids, attention_mask, lengths))
            hidden_states = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                       output_hidden_states=True).hidden_states
            pooled = [self.pool(hidden_states[i], attention_mask, lengths) for i in self.layer_indices]
            features = torch.cat(pooled, dim=-1)
        return {"text_hash": np.asarray(batch["text_hash"]), "embedding": features.float().cpu().numpy()}

    def pool(self, hidden, attention_mask, lengths):
        import torch

        if self.spec.pooling == "last":
            vectors = hidden[torch.arange(len(lengths), device=hidden.device), lengths - 1]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(vectors, dim=-1) if self.spec.normalize else vectors


class EmbeddingCache:
    """Embeddings of one :class:`FeatureSpec` on disk, as Parquet parts (``text_hash``, ``embedding``) under
    ``root/embeddings-<key>/``. Nothing is held in memory: a few texts are looked up by reading the parts with a
    filter (:meth:`lookup`), a corpus by joining :meth:`dataset` in Ray Data. Two writers that embed the same
    text leave it twice; readers keep one. ``root`` may be a URI (``s3://...``): the actors that embed a
    streamed corpus write their parts there from any node."""

    def __init__(self, root: str | Path, spec: FeatureSpec) -> None:
        self.spec = spec
        self.root = str(root)
        self.dir = join_location(root, f"embeddings-{spec.cache_key()}")
        self.filesystem, self.path = filesystem_and_path(self.dir)
        self.filesystem.create_dir(self.path, recursive=True)

    def parts(self) -> list[str]:
        """The parts' paths on :attr:`filesystem`."""
        return parquet_parts(self.dir)[1]

    def __len__(self) -> int:
        return len(self.hashes())

    def __contains__(self, key: str) -> bool:
        return key in self.lookup([key])

    def hashes(self) -> set[str]:
        import pyarrow.parquet as pq

        return {h for part in self.parts()
                for h in pq.read_table(part, columns=["text_hash"], filesystem=self.filesystem)["text_hash"].to_pylist()}

    def lookup(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached vectors of those of ``hashes`` that are cached."""
        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        wanted = list(dict.fromkeys(hashes))
        parts = self.parts()
        if not wanted or not parts:
            return {}
        table = pads.dataset(parts, format="parquet", filesystem=self.filesystem).to_table(
            filter=pc.field("text_hash").isin(wanted))
        vectors = table["embedding"].to_numpy(zero_copy_only=False)
        return {h: np.asarray(v, dtype=np.float32) for h, v in zip(table["text_hash"].to_pylist(), vectors)}

    def get(self, hashes: Iterable[str]) -> np.ndarray:
        hashes = list(hashes)
        found = self.lookup(hashes)
        missing = [h for h in hashes if h not in found]
        if missing:
            raise KeyError(f"{self.dir} has no embedding of text {missing[0]}")
        return np.stack([found[h] for h in hashes])

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Write new embeddings to a new part at once."""
        if len(hashes):
            write_part(self.dir, list(hashes), vectors)

    def dataset(self):
        """``text_hash, embedding`` of every cached text as a Ray Dataset; None while the cache is empty."""
        import ray.data

        parts = self.parts()
        return ray.data.read_parquet(parts, filesystem=self.filesystem) if parts else None


def write_part(directory: str | Path, hashes: list[str], vectors: np.ndarray) -> None:
    """One cache part of ``hashes`` and their ``vectors`` under ``directory`` (:func:`write_parquet_part`)."""
    # float lists as the first caches wrote them, so every part has one schema
    embedding = [np.asarray(v, dtype=np.float32).tolist() for v in vectors]
    write_parquet_part(directory, pd.DataFrame({"text_hash": hashes, "embedding": embedding}))


def text_table(spec: FeatureSpec, prompts, responses) -> pd.DataFrame:
    """One row per distinct text: ``text_hash`` (the cache key), ``text`` (prompt + response), ``prompt_chars``."""
    rows = {}
    for prompt, response in zip(prompts, responses):
        key = spec.text_key(prompt, response)
        if key not in rows:
            rows[key] = (reward_text(prompt, response), len(prompt))
    return pd.DataFrame({"text_hash": list(rows), "text": [t for t, _ in rows.values()],
                         "prompt_chars": [c for _, c in rows.values()]})


def missing_texts(cache: EmbeddingCache, texts: pd.DataFrame, cached: dict | None = None) -> pd.DataFrame:
    """The rows of ``texts`` not in ``cache`` (or in ``cached``, its :meth:`~EmbeddingCache.lookup` when the
    caller has it), shortest first: a batch then pads to texts of about its own size (characters stand in for
    tokens)."""
    cached = cache.lookup(texts["text_hash"]) if cached is None else cached
    missing = texts[[h not in cached for h in texts["text_hash"]]]
    order = np.argsort(missing["text"].str.len().to_numpy(), kind="stable")
    return missing.iloc[order].reset_index(drop=True)


def embed_missing(cache: EmbeddingCache, texts: pd.DataFrame, *, batch_size: int, concurrency: int,
                  cpus_per_actor: int, use_gpu: bool = False, flush_every: int = 512) -> int:
    """Embed the rows of ``texts`` (a :func:`text_table`) not yet in ``cache`` through a Ray Data actor pool
    (one GPU per actor with ``use_gpu``); returns how many."""
    return len(embed_texts(cache, missing_texts(cache, texts), batch_size=batch_size, concurrency=concurrency,
                           cpus_per_actor=cpus_per_actor, use_gpu=use_gpu, flush_every=flush_every))


def embed_texts(cache: EmbeddingCache, frame: pd.DataFrame, *, batch_size: int, concurrency: int,
                cpus_per_actor: int, use_gpu: bool = False, flush_every: int = 512) -> dict[str, np.ndarray]:
    """Embed the rows of ``frame`` (a :func:`text_table`) through a Ray Data actor pool, writing them to
    ``cache`` as they arrive; returns their vectors by text hash."""
    if frame.empty:
        return {}
    import ray

    log.info("embedding %d new texts with %s", len(frame), cache.spec.model)
    # one block per flush, so results stream back (and reach the cache) while the rest is still embedding
    ds = ray.data.from_pandas([frame.iloc[i:i + flush_every] for i in range(0, len(frame), flush_every)])
    ds = ds.map_batches(
        Embedder,
        fn_constructor_kwargs={"spec": cache.spec, "num_threads": cpus_per_actor,
                               "device": "cuda" if use_gpu else "cpu"},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=cpus_per_actor,
        num_gpus=1 if use_gpu else 0,
        batch_format="numpy",
    )
    new: dict[str, np.ndarray] = {}
    pending: list[str] = []
    from tqdm.auto import tqdm

    with tqdm(total=len(frame), desc="embed", unit="text", disable=os.environ.get("RLTHF_PROGRESS") == "0") as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            new.update(zip(batch["text_hash"].tolist(), batch["embedding"]))
            pending.extend(batch["text_hash"].tolist())
            bar.update(len(batch["text_hash"]))
            if len(pending) >= flush_every:
                cache.add(pending, np.stack([new[h] for h in pending]))
                pending = []
    if pending:
        cache.add(pending, np.stack([new[h] for h in pending]))
    return new


def pair_embeddings(cache: EmbeddingCache, pairs: pd.DataFrame, *, batch_size: int = 32, concurrency: int = 1,
                    cpus_per_actor: int = 1, use_gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Features of (prompt + response_a) and (prompt + response_b) for every pair, embedding what is missing
    (each distinct text once)."""
    spec = cache.spec
    texts = text_table(spec, list(pairs["prompt"]) * 2, list(pairs["response_a"]) + list(pairs["response_b"]))
    found = cache.lookup(texts["text_hash"])
    found.update(embed_texts(cache, missing_texts(cache, texts, found), batch_size=batch_size,
                             concurrency=concurrency, cpus_per_actor=cpus_per_actor, use_gpu=use_gpu))
    keys_a = [spec.text_key(p, r) for p, r in zip(pairs["prompt"], pairs["response_a"])]
    keys_b = [spec.text_key(p, r) for p, r in zip(pairs["prompt"], pairs["response_b"])]
    return np.stack([found[k] for k in keys_a]), np.stack([found[k] for k in keys_b])


# A corpus too large for one process: the pairs stream through Ray Data, the cache is joined on by text hash, and
# an actor pool embeds what the join did not find.

def pair_text_rows(batch: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """A batch of pairs with, per side a and b, the text a reward model reads (``text_a``), where its response
    starts (``chars_a``) and its cache key (``hash_a``), instead of ``prompt``, ``response_a``, ``response_b``."""
    out = batch.drop(columns=["prompt", "response_a", "response_b"])
    for side in "ab":
        responses = batch[f"response_{side}"]
        out[f"hash_{side}"] = [spec.text_key(p, r) for p, r in zip(batch["prompt"], responses)]
        out[f"text_{side}"] = [reward_text(p, r) for p, r in zip(batch["prompt"], responses)]
        out[f"chars_{side}"] = batch["prompt"].str.len().to_numpy()
    return out


def is_missing(vector) -> bool:
    """Whether a joined cell holds no vector (a left join's null: None, NaN or pandas' NA)."""
    return not isinstance(vector, (np.ndarray, list, tuple))


class CachedEmbedder:
    """Ray Data callable class after the cache join: fills ``emb_a`` and ``emb_b`` where the join found no
    cached vector, embedding each distinct text of the batch once, shortest first in ``batch_size`` groups, and
    writes them to the cache as one part; drops the text columns. The backbone loads at the first miss."""

    def __init__(self, spec: FeatureSpec, cache_dir: str, batch_size: int, num_threads: int = 1,
                 device: str = "cpu") -> None:
        self.spec, self.cache_dir, self.batch_size = spec, cache_dir, batch_size
        self.num_threads, self.device = num_threads, device
        self.embedder: Embedder | None = None

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        todo: dict[str, tuple[str, int]] = {}
        for side in "ab":
            for h, text, chars, vector in zip(batch[f"hash_{side}"], batch[f"text_{side}"], batch[f"chars_{side}"],
                                              batch[f"emb_{side}"]):
                if is_missing(vector):
                    todo.setdefault(h, (text, int(chars)))
        new = self.embed(todo) if todo else {}
        out = batch.drop(columns=[f"{c}_{side}" for c in ("hash", "text", "chars") for side in "ab"])
        for side in "ab":
            out[f"emb_{side}"] = [np.asarray(new[h] if is_missing(v) else v, dtype=np.float32)
                                  for h, v in zip(batch[f"hash_{side}"], batch[f"emb_{side}"])]
        return out

    def embed(self, todo: dict[str, tuple[str, int]]) -> dict[str, np.ndarray]:
        if self.embedder is None:
            self.embedder = Embedder(self.spec, self.num_threads, self.device)
        hashes = sorted(todo, key=lambda h: len(todo[h][0]))
        vectors = []
        for i in range(0, len(hashes), self.batch_size):
            chunk = hashes[i:i + self.batch_size]
            vectors.append(self.embedder({"text_hash": np.asarray(chunk), "text": [todo[h][0] for h in chunk],
                                          "prompt_chars": [todo[h][1] for h in chunk]})["embedding"])
        vectors = np.concatenate(vectors)
        write_part(join_location(self.cache_dir, f"embeddings-{self.spec.cache_key()}"), hashes, vectors)
        return dict(zip(hashes, vectors))


def streamed_pair_embeddings(cache: EmbeddingCache, pairs, *, pair_count: int, batch_size: int = 32,
                             concurrency: int = 1, cpus_per_actor: int = 1, use_gpu: bool = False,
                             block_pairs: int = 1024):
    """``pairs`` (a Ray Dataset with ``prompt, response_a, response_b`` and any other columns) with
    ``emb_a, emb_b`` instead of its texts: the cached vectors joined on by text hash (a Ray Data hash join,
    ``pair_count`` sizing its partitions), the others embedded by an actor pool (one GPU each with ``use_gpu``)
    and written to the cache. Rows come in no particular order; a pair whose text the cache holds twice comes
    twice."""
    import ray

    rows = pairs.map_batches(pair_text_rows, fn_kwargs={"spec": cache.spec}, batch_format="pandas")
    cached = cache.dataset()
    partitions = join_partitions(pair_count)
    for side in "ab":
        if cached is None:
            rows = rows.add_column(f"emb_{side}", lambda batch: pd.Series([None] * len(batch), dtype=object),
                                   batch_format="pandas")
        else:
            right = cached.rename_columns({"text_hash": f"hash_{side}", "embedding": f"emb_{side}"})
            rows = rows.join(right, join_type="left_outer", num_partitions=partitions, on=(f"hash_{side}",))
    # blocks of block_pairs rows: the pool hands out blocks, and a join's partition or a Parquet row group is
    # one block that one actor would embed alone
    rows = rows.repartition(target_num_rows_per_block=block_pairs)
    return rows.map_batches(
        CachedEmbedder,
        fn_constructor_kwargs={"spec": cache.spec, "cache_dir": cache.root, "batch_size": batch_size,
                               "num_threads": cpus_per_actor, "device": "cuda" if use_gpu else "cpu"},
        batch_size=block_pairs,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=streamed_actor_cpus(cpus_per_actor, concurrency),
        num_gpus=1 if use_gpu else 0,
        batch_format="pandas",
    )


def streamed_actor_cpus(cpus_per_actor: int, concurrency: int) -> float:
    """The CPUs each embedding actor reserves behind the cache join: its actors start first and hold what they
    reserve for the whole pass, while the join's aggregators (a quarter of the cluster's CPUs) and its shuffle
    tasks (one CPU each) still have to run before it, so together they leave those free (between 0.1 and
    ``cpus_per_actor`` each; the actor still runs ``cpus_per_actor`` torch threads)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    return round(max(0.1, min(float(cpus_per_actor), (0.75 * total - 1.0) / concurrency)), 2)


FEATURE_FILE_PAIRS = 50_000
FEATURE_ROW_GROUP = 4096  # pairs a row group: a few pairs read by id decode one (as rlthf.data.TEXT_ROW_GROUP)


def write_pair_features(cache: EmbeddingCache, pairs, path: str | Path, *, pair_count: int, **pool) -> None:
    """``id, emb_a, emb_b`` of every pair of ``pairs`` (a Ray Dataset of ``id, prompt, response_a,
    response_b``) as a Parquet folder at ``path``, embedded as :func:`streamed_pair_embeddings` does (``pool``:
    its actor pool options). A run writes its pairs' features once; every later pass reads them by id instead
    of joining the cache again (two hash joins a pass). Written beside ``path`` and renamed when whole."""
    embedded = streamed_pair_embeddings(cache, pairs.select_columns(["id", "prompt", "response_a", "response_b"]),
                                        pair_count=pair_count, **pool)
    # files of tens of thousands of pairs (a pass opens each: one per 1,024-pair block made every pass slow), in
    # small row groups (a few pairs read by id decode one)
    with replace_dir_when_done(path) as partial:
        embedded.map_batches(feature_table, batch_format="pandas").write_parquet(
            str(partial), min_rows_per_file=FEATURE_FILE_PAIRS, row_group_size=FEATURE_ROW_GROUP)


def feature_table(batch: pd.DataFrame):
    """A batch of ``id, emb_a, emb_b`` (a vector per cell) as an Arrow table of fixed-size float32 lists."""
    import pyarrow as pa

    def vectors(column: str):
        matrix = np.stack(batch[column].to_numpy()).astype(np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])

    return pa.table({"id": pa.array(batch["id"].to_numpy(dtype=object), pa.string()),
                     "emb_a": vectors("emb_a"), "emb_b": vectors("emb_b")})
