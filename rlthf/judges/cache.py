"""The verdict cache: a judge's answer is paid for once.

A JSON-lines file of verdict records: the verdict columns of :mod:`rlthf.judges.base` (``retryable`` among
them) plus ``cache_key``, ``model``, ``template_hash`` and ``time``. Each record is appended and fsynced as soon
as it comes back, so a crash loses no answer that was paid for. A torn last line (a crash mid-append) is ignored
on open, and ``append_jsonl_durable`` cuts it off before the next append. When a key appears
more than once (a failure, then the retry's success) the last record wins.

What is served again:

- a verdict without an ``error``: yes.
- a parse failure (``error`` set, ``retryable: False``): yes. The model did answer; at temperature 0 asking
  again costs the same and gets the same answer. The record keeps ``raw`` to look at.
- a transient failure (``error`` set, ``retryable: True``: a timeout, a 429, a 5xx): no, so a rerun asks again.
  A record with an ``error`` but no ``retryable`` (one written by other code) counts as transient: when in
  doubt, asking again costs money, while serving a failure forever loses the label.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlthf.rundir import append_jsonl_durable, read_jsonl


def cache_key(pair_id: str, order: str, model: str, template_hash: str, params: dict[str, Any]) -> str:
    """sha256 (hex) over a request's pair, order, model, prompt template and the parameters that change the
    answer (e.g. mode, temperature, max_new_tokens; sorted by name, so their order does not matter)."""
    parts = [str(pair_id), str(order), str(model), str(template_hash), params]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def is_servable(record: dict) -> bool:
    """Whether a cached verdict may be served instead of asking again (see the module docstring)."""
    return not record.get("error") or record.get("retryable") is False


class VerdictCache:
    """The verdicts in the JSON-lines file at ``path``, by cache key; ``get``, ``in`` and ``len`` see only the
    servable ones."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._records: dict[str, dict] = {}
        for record in read_jsonl(self.path):
            self._records[record["cache_key"]] = record  # a later line replaces an earlier one

    def get(self, key: str) -> dict | None:
        record = self._records.get(key)
        return record if record is not None and is_servable(record) else None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __len__(self) -> int:
        return sum(is_servable(record) for record in self._records.values())

    def add(self, records: list[dict]) -> None:
        """Append each record durably (one fsync each) and keep it; ``time`` is set when missing."""
        for record in records:  # all checked before any is written
            if not record.get("cache_key"):
                raise ValueError("a verdict record needs a cache_key")
            if record.get("error") and not isinstance(_plain(record.get("retryable")), bool):
                # The writer must decide: serve this failure on the next run, or ask again?
                raise ValueError(f"{record['cache_key']}: a verdict with an error needs retryable: true or false")
        for record in records:
            record = {key: _plain(value) for key, value in record.items()}
            record.setdefault("time", datetime.now(timezone.utc).isoformat(timespec="seconds"))
            append_jsonl_durable(self.path, record)
            self._records[record["cache_key"]] = record


def _plain(value: Any) -> Any:
    # numpy scalars from a verdict batch become Python ones, so a record in memory equals the one read back.
    return value.item() if hasattr(value, "item") else value
