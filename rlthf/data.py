"""Preference pairs: the one table every step reads, and the loaders that build it.

A pair is a row with ``PAIR_COLUMNS``. Labels are ``"a"`` or ``"b"`` (which response is preferred) or None.
``human_label`` is the dataset's own preference (the hidden ground truth in a simulation), ``label`` the working
label and ``label_source`` where it came from (``"ai"``, ``"human"``, ``"flipped"``, ``"rm"``); both are None
after loading. A bad record is never silently dropped: it comes back as an :class:`InvalidRecord` that names its
line and field.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import pandas as pd

from rlthf.rundir import atomic_write_jsonl

if TYPE_CHECKING:
    import ray.data

PAIR_COLUMNS = ("id", "prompt", "response_a", "response_b", "human_label", "label", "label_source")
LABEL_COLUMNS = ("human_label", "label", "label_source")
LABELS = ("a", "b")
FORMATS = ("auto", "hh_rlhf", "pairs", "hf")
ASSISTANT_TURN = "\n\nAssistant:"

logger = logging.getLogger("rlthf")


class InvalidRecord(ValueError):
    """A record that cannot be a pair: where it is (``source``, 1-based ``line``), which ``field`` and why."""

    def __init__(self, source: str, line: int, field: str, reason: str) -> None:
        # All four in args, so the error survives pickling (a Ray task may raise it).
        super().__init__(source, line, field, reason)
        self.source, self.line, self.field, self.reason = source, line, field, reason

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: field '{self.field}': {self.reason}"

    def to_dict(self) -> dict:
        return {"source": self.source, "line": self.line, "field": self.field, "reason": self.reason}


def hash_unit(seed: int, salt: str, ids: Iterable[str]) -> np.ndarray:
    """Deterministic uniform floats in [0, 1), one per id.

    Each value comes from sha256 of ``f"{seed}:{salt}:{id}"``, so it depends on neither the order of ``ids`` nor
    Python's hash seed; ``salt`` keeps the draws of different decisions (a/b order, split, shard) independent.
    """
    if isinstance(ids, str):
        raise TypeError("ids must be a collection of ids, not one string")
    # The top 53 bits fill a float64 mantissa exactly, so the result is never rounded up to 1.0.
    top_bits = [int.from_bytes(hashlib.sha256(f"{seed}:{salt}:{i}".encode()).digest()[:8], "big") >> 11
                for i in ids]
    return np.array(top_bits, dtype=np.float64) / 2.0**53


def pair_id(prompt: str, response_1: str, response_2: str) -> str:
    """The id of a pair: 16 hex characters of sha256 over the prompt and the two responses sorted, so swapping
    a and b (or chosen and rejected) gives the same id."""
    text = prompt + "\x00" + "\x00".join(sorted((response_1, response_2)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_pairs(
    path: str | Path,
    *,
    format: str = "auto",
    seed: int = 0,
    on_invalid: str = "skip",
    max_pairs: int | None = None,
    hf_split: str = "train",
) -> tuple[pd.DataFrame, list[InvalidRecord]]:
    """Read preference pairs from a file or a Hugging Face dataset.

    Parameters
    ----------
    path : str or Path
        A ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` file, or a Hugging Face dataset name.
    format : {'auto', 'hh_rlhf', 'pairs', 'hf'}, default='auto'
        ``hh_rlhf``: Anthropic HH-RLHF lines ``{"chosen": transcript, "rejected": transcript}``, each transcript
        split at its last ``"\\n\\nAssistant:"`` (the prompt keeps it, as in TRL). ``pairs``: records with
        ``prompt`` and either ``chosen``/``rejected`` or ``response_a``/``response_b`` plus an optional ``label``
        (``"a"``/``"b"``; null or absent: unlabelled; ignored beside chosen/rejected, which say it).
        ``hf``: ``datasets.load_dataset(path, split=hf_split)``, read as ``hh_rlhf`` when its columns have
        ``chosen`` and ``rejected`` but no ``prompt``, else as ``pairs``.
        ``auto``: ``.parquet`` is ``pairs``; a jsonl file is ``hh_rlhf`` when its first JSON object has
        ``chosen`` and ``rejected`` but no ``prompt``, else ``pairs``; a path that is no file is ``hf``.
    seed : int, default=0
        Seeds the per-pair coin flip that puts chosen/rejected into a/b order (by pair id, not by row).
    on_invalid : {'skip', 'error'}, default='skip'
        ``skip``: collect bad records and go on; ``error``: raise the first one.
    max_pairs : int, optional
        Stop after this many valid pairs.
    hf_split : str, default='train'
        The split to read when the source is a Hugging Face dataset.

    Returns
    -------
    pairs : pd.DataFrame
        Exactly ``PAIR_COLUMNS``, in file order; the label columns have object dtype so None stays None.
    rejected : list of InvalidRecord
        The records that were skipped, in file order.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if on_invalid not in ("skip", "error"):
        raise ValueError(f"on_invalid must be 'skip' or 'error'; got {on_invalid!r}")
    source, rows, style = _open_source(path, format, hf_split)
    parse = _parse_transcripts if style == "hh_rlhf" else _parse_pairs

    pairs: list[dict] = []
    rejected: list[InvalidRecord] = []
    line_of_id: dict[str, int] = {}
    for line, row in rows:
        if max_pairs is not None and len(pairs) >= max_pairs:
            break
        try:
            pair = parse(_as_record(row), seed)
            if pair["id"] in line_of_id:
                raise _Reject("id", f"duplicate of line {line_of_id[pair['id']]}")
        except _Reject as bad:
            error = InvalidRecord(source, line, bad.field, bad.reason)
            if on_invalid == "error":
                raise error from None
            rejected.append(error)
            continue
        line_of_id[pair["id"]] = line
        pairs.append(pair)
    return _pairs_frame(pairs), rejected


def load_pairs(path: str | Path, *, rejected_path: str | Path | None = None, **read_kwargs: Any) -> ray.data.Dataset:
    """:func:`read_pairs` into a Ray Dataset; the rejected records go to ``rejected_path`` as jsonl when given.

    Every column is an Arrow string column; an unset label is null (None in batches).
    """
    import pyarrow as pa
    import ray.data

    pairs, rejected = read_pairs(path, **read_kwargs)
    if rejected_path is not None:
        atomic_write_jsonl(rejected_path, (r.to_dict() for r in rejected))
    if rejected:
        where = f" (see {rejected_path})" if rejected_path is not None else ""
        logger.warning("%s: skipped %d invalid records, kept %d pairs%s", path, len(rejected), len(pairs), where)
    # An explicit schema: ray.data.from_pandas leaves the all-None label columns untyped (Python objects in
    # Ray, null in Parquet), unlike the same columns once labels are filled in.
    schema = pa.schema([(name, pa.string()) for name in PAIR_COLUMNS])
    return ray.data.from_arrow(pa.Table.from_pandas(pairs, schema=schema, preserve_index=False))


def split_test(ids: Iterable[str], test_fraction: float, seed: int) -> np.ndarray:
    """True for held-out test pairs: each pair by itself, with chance ``test_fraction``, from a hash of its id."""
    return hash_unit(seed, "test", ids) < test_fraction


def choose_shard(ids: Iterable[str], shard_fraction: float, seed: int) -> np.ndarray:
    """True for exactly ``max(1, round(shard_fraction * n))`` pairs: those with the smallest hash of their id."""
    score = hash_unit(seed, "shard", ids)
    size = min(len(score), max(1, round(shard_fraction * len(score))))
    chosen = np.zeros(len(score), dtype=bool)
    chosen[np.argsort(score, kind="stable")[:size]] = True
    return chosen


class _Reject(Exception):
    """Raised by the record parsers; :func:`read_pairs` adds the source and line."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field, self.reason = field, reason


# Sources: each yields (1-based line or row number, raw row); a jsonl row is the line's text.

def _open_source(path: str | Path, format: str, hf_split: str) -> tuple[str, Iterator[tuple[int, Any]], str]:
    """The source's name for messages, its rows, and their style (``hh_rlhf`` or ``pairs``)."""
    if format == "hf" or (format == "auto" and not Path(path).is_file()):
        return _open_hf(str(path), hf_split)
    path = Path(path)
    is_parquet = path.name.endswith(".parquet")
    rows = _parquet_rows(path) if is_parquet else _jsonl_rows(path)
    if format != "auto":
        style = format
    elif is_parquet:
        style = "pairs"
    else:
        first = _first_json_object(path)
        style = "hh_rlhf" if first is not None and _is_transcript_record(first) else "pairs"
    return path.name, rows, style


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, str]]:
    with _open_text(path) as fh:
        for line, text in enumerate(fh, 1):
            if text.strip():
                yield line, text


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    row_number = 0
    for batch in pq.ParquetFile(path).iter_batches():  # batches, so max_pairs need not read the whole file
        for row in batch.to_pylist():
            row_number += 1
            yield row_number, row


def _open_hf(name: str, split: str) -> tuple[str, Iterator[tuple[int, dict]], str]:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"{name!r} is read as a Hugging Face dataset name (format 'hf', or no such file), which needs the "
            "`datasets` package: pip install rlthf[hf]") from None
    dataset = datasets.load_dataset(name, split=split)
    style = "hh_rlhf" if _is_transcript_record(dataset.column_names) else "pairs"
    return name, enumerate(dataset, 1), style


def _first_json_object(path: Path) -> dict | None:
    for _, text in _jsonl_rows(path):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _is_transcript_record(keys: Iterable[str]) -> bool:
    keys = set(keys)
    return {"chosen", "rejected"} <= keys and "prompt" not in keys


# Parsers: a raw row in, a pair out, or a _Reject naming the field.

def _as_record(row: Any) -> dict:
    if isinstance(row, str):
        try:
            row = json.loads(row)
        except json.JSONDecodeError as err:
            raise _Reject("json", f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(row, dict):
        raise _Reject("json", f"expected a JSON object, got {type(row).__name__}")
    return row


def _parse_transcripts(record: dict, seed: int) -> dict:
    chosen = _text_field(record, "chosen")
    rejected = _text_field(record, "rejected")
    prompt, chosen_response = _split_transcript(chosen, "chosen")
    rejected_prompt, rejected_response = _split_transcript(rejected, "rejected")
    if rejected_prompt != prompt:
        raise _Reject("rejected", "the dialogue before the last assistant turn differs from chosen's")
    _check_responses(chosen_response, rejected_response, "chosen", "rejected")
    return _from_chosen_rejected(prompt, chosen_response, rejected_response, seed)


def _parse_pairs(record: dict, seed: int) -> dict:
    prompt = _text_field(record, "prompt")
    if not prompt.strip():
        raise _Reject("prompt", "empty")
    if "response_a" in record or "response_b" in record:
        response_a = _text_field(record, "response_a")
        response_b = _text_field(record, "response_b")
        _check_responses(response_a, response_b, "response_a", "response_b")
        label = record.get("label")
        if label is not None and label not in LABELS:
            raise _Reject("label", f"expected 'a', 'b' or null, got {label!r}")
        return _pair(pair_id(prompt, response_a, response_b), prompt, response_a, response_b, label)
    # chosen/rejected say the preference themselves; a 'label' next to them has nothing to add.
    chosen = _text_field(record, "chosen")
    rejected = _text_field(record, "rejected")
    _check_responses(chosen, rejected, "chosen", "rejected")
    return _from_chosen_rejected(prompt, chosen, rejected, seed)


def _text_field(record: dict, field: str) -> str:
    value = record.get(field)
    if value is None:
        raise _Reject(field, "missing or null")
    if not isinstance(value, str):
        raise _Reject(field, f"expected a string, got {type(value).__name__}")
    return value


def _split_transcript(transcript: str, field: str) -> tuple[str, str]:
    """Prompt up to and including the last assistant turn marker, and the response after it, verbatim."""
    cut = transcript.rfind(ASSISTANT_TURN)
    if cut < 0:
        raise _Reject(field, f"no {ASSISTANT_TURN!r} turn in the transcript")
    cut += len(ASSISTANT_TURN)
    return transcript[:cut], transcript[cut:]


def _check_responses(first: str, second: str, first_field: str, second_field: str) -> None:
    if not first.strip():
        raise _Reject(first_field, "empty response")
    if not second.strip():
        raise _Reject(second_field, "empty response")
    if first == second:
        raise _Reject(second_field, f"same response as {first_field}")


def _from_chosen_rejected(prompt: str, chosen: str, rejected: str, seed: int) -> dict:
    """Put chosen/rejected in a/b order by a coin flip seeded per pair id, so the order never hints the label."""
    pid = pair_id(prompt, chosen, rejected)
    if hash_unit(seed, "ab", [pid])[0] < 0.5:
        return _pair(pid, prompt, chosen, rejected, "a")
    return _pair(pid, prompt, rejected, chosen, "b")


def _pair(pid: str, prompt: str, response_a: str, response_b: str, human_label: str | None) -> dict:
    return {"id": pid, "prompt": prompt, "response_a": response_a, "response_b": response_b,
            "human_label": human_label, "label": None, "label_source": None}


def _pairs_frame(pairs: list[dict]) -> pd.DataFrame:
    columns = {}
    for name in PAIR_COLUMNS:
        dtype = object if name in LABEL_COLUMNS else str  # object: None stays None instead of becoming NaN
        columns[name] = pd.Series([p[name] for p in pairs], dtype=dtype)
    return pd.DataFrame(columns)
