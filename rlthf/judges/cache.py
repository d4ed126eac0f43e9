"""The verdict cache: a judge's answer is paid for once.

A folder (a path or any pyarrow URI: ``s3://...``) of Parquet parts, one row a verdict: the verdict columns of
:mod:`rlthf.judges.base` (``retryable`` among them) plus ``cache_key``, ``model``, ``template_hash`` and
``time``. Labeling writes a part per batch of verdicts as they come back, whole or not at all, from whichever
worker judged them, so a crash loses only the batch in flight; nothing is held on the driver: a corpus is joined
on the cache by ``cache_key`` in Ray Data (:meth:`VerdictCache.dataset`), a few keys are read with a filter
(:meth:`VerdictCache.lookup`).

What is served again:

- a verdict without an ``error``: yes.
- a parse failure (``error`` set, ``retryable: False``): yes. The model did answer; at temperature 0 asking
  again costs the same and gets the same answer. The record keeps ``raw`` to look at.
- a transient failure (``error`` set, ``retryable: True``: a timeout, a 429, a 5xx): no, so a rerun asks again.
  A record with an ``error`` but no ``retryable`` (one written by other code) counts as transient: when in
  doubt, asking again costs money, while serving a failure forever loses the label.

A key with a servable record is served (the newest one, when two runs sharing the cache asked at once); a
transient failure recorded later never hides an answer that was paid for.

Run directories of earlier versions kept the cache as JSON lines at ``<folder>.jsonl``; it is read once into
the part ``part-jsonl.parquet`` (a torn last line, from a crash mid-append, is skipped) and left in place.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from rlthf.judges.base import VERDICT_COLUMNS
from rlthf.rundir import is_uri, parquet_parts, read_jsonl, replace_when_done, write_parquet_part

RECORD_COLUMNS = ("cache_key", *VERDICT_COLUMNS, "model", "template_hash", "time")
LEGACY_PART = "part-jsonl.parquet"


def cache_key(pair_id: str, order: str, model: str, template_hash: str, params: dict[str, Any]) -> str:
    """sha256 (hex) over a request's pair, order, model, prompt template and the parameters that change the
    answer (e.g. mode, temperature, max_new_tokens; sorted by name, so their order does not matter)."""
    parts = [str(pair_id), str(order), str(model), str(template_hash), params]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def is_servable(record: dict) -> bool:
    """Whether a cached verdict may be served instead of asking again (see the module docstring)."""
    return not record.get("error") or record.get("retryable") is False


def servable_rows(table):
    """The rows of an Arrow table of records that may be served (:func:`is_servable`, vectorised)."""
    import pyarrow.compute as pc

    answered = pc.equal(pc.fill_null(table["error"], ""), "")
    final = pc.equal(pc.fill_null(table["retryable"], True), False)
    return table.filter(pc.or_(answered, final))


def record_schema():
    """The Arrow schema of a part."""
    import pyarrow as pa

    types = {"logprob_a": pa.float64(), "logprob_b": pa.float64(), "prompt_tokens": pa.int64(),
             "completion_tokens": pa.int64(), "retryable": pa.bool_()}
    return pa.schema([(column, types.get(column, pa.string())) for column in RECORD_COLUMNS])


def record_table(records: pd.DataFrame):
    """Verdict records as an Arrow table in :data:`RECORD_COLUMNS`' order and types; ``time`` is set where it
    is missing. A record with an error must say whether it is ``retryable`` (the writer decides: serve this
    failure on the next run, or ask again?)."""
    import pyarrow as pa

    records = records.reset_index(drop=True)
    if "cache_key" not in records or records["cache_key"].isna().any() or (records["cache_key"] == "").any():
        raise ValueError("a verdict record needs a cache_key")
    failed = records["error"].fillna("") != ""
    retryable = records["retryable"] if "retryable" in records else pd.Series([None] * len(records), dtype=object)
    undecided = failed & ~retryable.map(lambda value: isinstance(value, (bool, np.bool_)))
    if undecided.any():
        key = records["cache_key"][undecided].iloc[0]
        raise ValueError(f"{key}: a verdict with an error needs retryable: true or false")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    time = records["time"].fillna(now) if "time" in records else pd.Series([now] * len(records))
    columns = {**{c: records[c] for c in RECORD_COLUMNS if c in records}, "retryable": retryable, "time": time}
    return pa.Table.from_pydict({c: columns[c].tolist() for c in RECORD_COLUMNS}, schema=record_schema())


class VerdictCache:
    """The verdicts in the folder ``root`` (see the module docstring; a ``.jsonl`` path: :func:`cache_location`).
    ``len`` counts the keys it serves."""

    def __init__(self, root: str | Path) -> None:
        self.root = cache_location(root)
        if not is_uri(self.root):
            Path(self.root).mkdir(parents=True, exist_ok=True)
            self.read_legacy_jsonl(Path(self.root + ".jsonl"))

    def parts(self) -> list[str]:
        return parquet_parts(self.root)[1]

    def read_legacy_jsonl(self, path: Path) -> None:
        part = Path(self.root) / LEGACY_PART
        if part.exists() or not path.is_file():
            return
        records = pd.DataFrame(read_jsonl(path))
        if len(records):
            import pyarrow.parquet as pq

            with replace_when_done(part) as tmp:
                pq.write_table(record_table(records), tmp)

    def add(self, records: pd.DataFrame | list[dict]) -> None:
        """Write ``records`` as one new part (all checked before any is written)."""
        records = pd.DataFrame(records)
        if len(records):
            write_parquet_part(self.root, record_table(records))

    def table(self, keys: Iterable[str] | None = None):
        """The servable records (all, or those of ``keys``) as an Arrow table, newest first; for a few keys."""
        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        filesystem, parts = parquet_parts(self.root)
        if not parts:
            return record_schema().empty_table()
        found = pads.dataset(parts, format="parquet", filesystem=filesystem)
        wanted = None if keys is None else pc.field("cache_key").isin(list(keys))
        return servable_rows(found.to_table(filter=wanted)).sort_by([("time", "descending")])

    def lookup(self, keys: Iterable[str]) -> dict[str, dict]:
        """The served record of each of ``keys`` that has one."""
        served: dict[str, dict] = {}
        for record in self.table(keys).to_pylist():
            served.setdefault(record["cache_key"], record)
        return served

    def get(self, key: str) -> dict | None:
        return self.lookup([key]).get(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __len__(self) -> int:
        import pyarrow.compute as pc

        return len(pc.unique(self.table()["cache_key"]))

    def dataset(self):
        """The servable records as a Ray Dataset (to join on ``cache_key``); None while the cache is empty."""
        import ray.data

        filesystem, parts = parquet_parts(self.root)
        if not parts:
            return None
        return ray.data.read_parquet(parts, filesystem=filesystem).map_batches(servable_rows, batch_format="pyarrow")


def cache_location(path: str | Path) -> str:
    """The cache folder for ``path``; a ``.jsonl`` path (an earlier version's cache file) names the folder beside
    it without the suffix, into which the file is read once."""
    path = str(path)
    return path[: -len(".jsonl")] if path.endswith(".jsonl") else path
