"""Preference pairs: the one table every step reads, and the loaders that build it.

A pair is a row with ``PAIR_COLUMNS``. Labels are ``"a"`` or ``"b"`` (which response is preferred) or None.
``human_label`` is the dataset's own preference (the hidden ground truth in a simulation), ``label`` the working
label and ``label_source`` where it came from (``"ai"``, ``"human"``, ``"flipped"``, ``"rm"``); both are None
after loading. A bad record is never silently dropped: it comes back as an :class:`InvalidRecord` that names its
line and field.

Extra columns. A generic ``pairs`` record may carry more than its pair: every other top-level field becomes a
column after ``PAIR_COLUMNS`` (a vicuna80 record's ``question_id``, ``judge_label``, ...), in order of first
appearance, null where a record lacks it. Scalars stay as they are; lists and objects become JSON text, other
values (a Parquet date) their ``str()``; a column whose records mix strings, numbers and booleans becomes text,
so the frame always writes to Parquet. A field named like a pair column that the parser does not read (``id``,
``human_label``, ``label_source``) is kept as ``record_id`` (...): ``id`` is always rlthf's content hash,
:func:`pair_id`. HH-RLHF transcripts have exactly ``PAIR_COLUMNS``.

Some extra columns have a role: ``label_columns`` hold an AI label per pair (checked as they are read; see
:func:`column_ai_labels`), ``group_column`` names the pairs that the test split and the shard keep together
(:func:`split_test`, :func:`choose_shard`, :func:`split_and_shard`).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from rlthf.config import ConfigError
from rlthf.core.dialogue import ASSISTANT_TURN, split_transcript
from rlthf.core.labels import LABEL_COLUMNS, LABELS, PAIR_COLUMNS, PAIR_TEXT, VERDICTS, combine_orders, hash_unit
from rlthf.rundir import atomic_write_jsonl, replace_when_done

if TYPE_CHECKING:
    import ray.data

    from rlthf.config import AILabelConfig, DataConfig, RLTHFConfig

FORMATS = ("auto", "hh_rlhf", "pairs", "hf")
# The fields of a generic record that make its pair; every other top-level field is kept as an extra column.
PARSED_FIELDS = ("prompt", "response_a", "response_b", "chosen", "rejected", "label")
# A record's own field named like a pair column it does not set (id, human_label, label_source) gets this prefix.
RECORD_PREFIX = "record_"

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


class MissingColumnError(ValueError):
    """A column that :func:`read_pairs` was asked to check (an AI label or the group) is in no pair read."""

    def __init__(self, source: str, column: str, role: str, available: Sequence[str]) -> None:
        super().__init__(source, column, role, tuple(available))
        self.source, self.column, self.role, self.available = source, column, role, tuple(available)

    def __str__(self) -> str:
        return (f"{self.source}: no pair has the {self.role} column {self.column!r}; "
                f"the pairs have {', '.join(self.available)}")


def pair_id(prompt: str, response_1: str, response_2: str) -> str:
    """The id of a pair: 16 hex characters of sha256 over the prompt and the two responses sorted, so swapping
    a and b (or chosen and rejected) gives the same id."""
    text = prompt + "\x00" + "\x00".join(sorted((response_1, response_2)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_pairs(path: str | Path, *, format: str = "auto", seed: int = 0, on_invalid: str = "skip",
               max_pairs: int | None = None, hf_split: str = "train", label_columns: Sequence[str] = (),
               group_column: str | None = None, margin_columns: Sequence[str] = (),
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
    label_columns : sequence of str, default=()
        Extra columns that hold an AI label: ``'a'``, ``'b'``, ``'tie'`` or null (also absent), in any case,
        stored lower-cased; any other value makes the record invalid, with the column as its field.
    group_column : str, optional
        The column that groups pairs for the splits; when it is an extra column, a record without a value there
        is invalid.
    margin_columns : sequence of str, default=()
        Extra columns that hold a judge's log-probability margin: a finite number or null (also absent), stored
        as a float (NaN for null); anything else (text, a bool, inf) makes the record invalid.

    Returns
    -------
    pairs : pd.DataFrame
        ``PAIR_COLUMNS``, in file order; the label columns have object dtype so None stays None. Then, for the
        ``pairs`` format, the extra columns (module docstring).
    rejected : list of InvalidRecord
        The records that were skipped, in file order.

    Raises
    ------
    InvalidRecord
        With ``on_invalid='error'``, the first bad record.
    MissingColumnError
        When a label, margin or group column is in no pair read.
    """
    _check_read_options(format, on_invalid, label_columns, margin_columns)
    source, rows, style = _open_source(path, format, hf_split)
    rejected: list[InvalidRecord] = []
    records = list(_read_records(source, rows, style, seed=seed, on_invalid=on_invalid, max_pairs=max_pairs,
                                 label_columns=tuple(label_columns), group_column=group_column, rejected=rejected,
                                 margin_columns=tuple(margin_columns)))
    frame = _pairs_frame([pair for pair, _ in records], [extra for _, extra in records])
    for column, role in _checked_columns(label_columns, group_column, margin_columns):
        if column is not None and column not in frame.columns:
            raise MissingColumnError(source, column, role, frame.columns)
    return frame, rejected


TEXT_ROW_GROUP = 4096  # pairs per row group of the texts file read_pairs_to_parquet writes


def read_pairs_to_parquet(path: str | Path, texts_path: str | Path, *, chunk_pairs: int = 20_000,
                          derive: Callable[[pd.DataFrame], dict] | None = None, format: str = "auto",
                          seed: int = 0, on_invalid: str = "skip", max_pairs: int | None = None,
                          hf_split: str = "train", label_columns: Sequence[str] = (),
                          group_column: str | None = None, margin_columns: Sequence[str] = (),
                          ) -> tuple[pd.DataFrame, list[InvalidRecord]]:
    """:func:`read_pairs` for a corpus larger than memory: the texts stream to ``texts_path`` and only the rest
    comes back.

    Every ``chunk_pairs`` valid pairs, their ``PAIR_TEXT`` columns are appended to the Parquet file
    ``texts_path`` (written to a temporary name and renamed when complete), in file order. The returned frame
    is :func:`read_pairs`' without ``prompt``, ``response_a`` and ``response_b``, plus the columns that
    ``derive`` makes of each chunk while its texts are still at hand (``derive(chunk) -> {name: values}``, one
    value per row of the chunk, which has ``PAIR_COLUMNS`` and no extras). Other arguments as in
    :func:`read_pairs`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_read_options(format, on_invalid, label_columns, margin_columns)
    source, rows, style = _open_source(path, format, hf_split)
    rejected: list[InvalidRecord] = []
    records = _read_records(source, rows, style, seed=seed, on_invalid=on_invalid, max_pairs=max_pairs,
                            label_columns=tuple(label_columns), group_column=group_column, rejected=rejected,
                            margin_columns=tuple(margin_columns))
    index_columns = tuple(c for c in PAIR_COLUMNS if c not in PAIR_TEXT[1:])
    text_schema = pa.schema([pa.field(c, pa.string()) for c in PAIR_TEXT])
    kept: list[pd.DataFrame] = []
    extras: list[dict] = []
    no_extras: dict = {}  # one shared empty dict for the many records without extras (all of hh_rlhf's)
    with replace_when_done(texts_path) as partial, pq.ParquetWriter(partial, text_schema) as writer:
        for chunk in _chunks(records, chunk_pairs):
            frame = _pairs_frame([pair for pair, _ in chunk], [{} for _ in chunk])
            # small row groups: a step that reads a few pairs by id decodes a row group at a time
            writer.write_table(pa.Table.from_pandas(frame[list(PAIR_TEXT)], schema=text_schema,
                                                    preserve_index=False), row_group_size=TEXT_ROW_GROUP)
            kept.append(frame[list(index_columns)].assign(**(derive(frame) if derive else {})))
            extras.extend(extra or no_extras for _, extra in chunk)
    frame = pd.concat(kept, ignore_index=True) if kept else _pairs_frame([], [], index_columns)
    derived = {name: frame.pop(name).to_numpy() for name in list(frame.columns) if name not in index_columns}
    frame = pd.concat([frame, _pairs_frame([{}] * len(frame), extras, ())], axis=1)
    for name, values in derived.items():
        if name in frame.columns:
            raise ValueError(f"{path}: the data has a column {name!r}, a name the run derives itself")
        frame[name] = values
    for column, role in _checked_columns(label_columns, group_column, margin_columns):
        if column is not None and column not in frame.columns and column not in PAIR_TEXT:
            raise MissingColumnError(source, column, role, frame.columns)
    return frame, rejected


def _checked_columns(label_columns, group_column, margin_columns) -> list[tuple[str | None, str]]:
    """The columns a read must find in some pair, with their roles."""
    return [(group_column, "group"), *((c, "AI label") for c in label_columns),
            *((c, "AI margin") for c in margin_columns)]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def load_pairs(path: str | Path, *, rejected_path: str | Path | None = None, **read_kwargs: Any) -> ray.data.Dataset:
    """:func:`read_pairs` into a Ray Dataset; the rejected records go to ``rejected_path`` as jsonl when given.

    ``PAIR_COLUMNS`` are Arrow string columns, an unset label is null (None in batches); the extra columns keep
    the type Arrow infers, text as ``string`` (also where every value is null).
    """
    import ray.data

    pairs, rejected = read_pairs(path, **read_kwargs)
    if rejected_path is not None:
        atomic_write_jsonl(rejected_path, (r.to_dict() for r in rejected))
    if rejected:
        where = f" (see {rejected_path})" if rejected_path is not None else ""
        logger.warning("%s: skipped %d invalid records, kept %d pairs%s", path, len(rejected), len(pairs), where)
    return ray.data.from_arrow(_arrow_table(pairs))


def read_configured_pairs(config: RLTHFConfig, texts_path: str | Path | None = None,
                          derive: Callable[[pd.DataFrame], dict] | None = None,
                          ) -> tuple[pd.DataFrame, list[InvalidRecord]]:
    """:func:`read_pairs` as a run config says: ``data.*``, ``seed``, the AI label columns when
    ``ai_labels.source`` is ``column`` and ``data.group_column``; with ``texts_path``,
    :func:`read_pairs_to_parquet` (the texts go there, ``derive`` as it says). A column the data lacks is a
    :class:`~rlthf.config.ConfigError` that starts with the key that names it."""
    d, a = config.data, config.ai_labels
    margins = (a.margin_column,) if a.source == "column" and a.margin_column else ()
    options = dict(format=d.format, seed=config.seed, on_invalid=d.on_invalid, max_pairs=d.max_pairs,
                   hf_split=d.hf_split, label_columns=ai_label_columns(a), group_column=d.group_column,
                   margin_columns=margins)
    try:
        if texts_path is None:
            return read_pairs(d.path, **options)
        return read_pairs_to_parquet(d.path, texts_path, derive=derive, **options)
    except MissingColumnError as missing:
        if missing.role == "group":
            key = "data.group_column"
        elif missing.role == "AI margin":
            key = "ai_labels.margin_column"
        else:
            key = "ai_labels.column" if missing.column == a.column else "ai_labels.swapped_column"
        raise ConfigError(f"{key}: {missing}") from None


def ai_label_columns(ai_labels: AILabelConfig) -> tuple[str, ...]:
    """The data columns that hold AI labels: ``column`` (and ``swapped_column``) when ``source`` is ``column``."""
    if ai_labels.source != "column":
        return ()
    return (ai_labels.column,) + ((ai_labels.swapped_column,) if ai_labels.swapped_column else ())


def column_ai_labels(pairs: pd.DataFrame, ai_labels: AILabelConfig) -> pd.DataFrame:
    """The AI labels that come with the data, one row per pair, in the shape of a live judge's labels.

    ``id``; ``label`` ('a', 'b' or None) and ``consistent`` (both orders agree) by
    :func:`rlthf.core.labels.combine_orders` of ``ai_labels.column`` and ``ai_labels.swapped_column``; and
    ``confidence`` as :func:`rlthf.judges.labeling.aggregate_verdicts` names it: ``consistent``, ``inconsistent``
    (the orders disagree), ``single`` (one order gave a label) or ``failed`` (none did); ``margin``, the
    ``ai_labels.margin_column`` as floats (NaN without one).
    """
    named = (("ai_labels.column", ai_labels.column), ("ai_labels.swapped_column", ai_labels.swapped_column))
    for key, column in (*named, ("ai_labels.margin_column", ai_labels.margin_column)):
        if column is not None and column not in pairs.columns:
            raise ConfigError(f"{key}: the pairs have no column {column!r}; they have {', '.join(pairs.columns)}")
    orders = [pairs[c].to_numpy() for _, c in named if c is not None]
    label, consistent = combine_orders(*orders)
    votes = sum(pd.notna(combine_orders(order)[0]).astype(int) for order in orders)
    confidence = np.where(consistent, "consistent", np.where(votes == 2, "inconsistent",
                                                             np.where(votes == 1, "single", "failed")))
    margin = (pd.to_numeric(pairs[ai_labels.margin_column]).to_numpy(dtype=float) if ai_labels.margin_column
              else np.full(len(pairs), np.nan))
    return pd.DataFrame({"id": pairs["id"].to_numpy(), "label": pd.Series(label, dtype=object),  # None stays None
                         "consistent": consistent, "confidence": confidence, "margin": margin})


# Splits. Pairs that share a group key (a prompt, a question id) fall on the same side of every split, so no
# prompt seen in training is tested on, and the shard holds whole groups. Without groups each pair is its own.

def split_test(ids: Iterable[str], test_fraction: float, seed: int, groups: Iterable | None = None) -> np.ndarray:
    """True for held-out test pairs: each group by itself, with chance ``test_fraction``, from a hash of its key.

    Parameters
    ----------
    ids : iterable of str
        The pair ids.
    test_fraction : float
        Each group's chance to be held out: the expected share of groups and of pairs. It is a chance, not a
        count, so a pair's side depends on its group key and the seed alone, never on the other pairs (a
        reader of the same file with other ``max_pairs`` finds the same test pairs); the realised share of pairs
        scatters more with few or uneven groups (80 questions: about 0.2 +- 0.045).
    seed : int
        Seeds the hash (salt ``"test"``).
    groups : iterable, optional
        One group key per id (``str(key)`` is hashed; no nulls). None: every pair is its own group (its id).

    Returns
    -------
    np.ndarray of bool
    """
    return hash_unit(seed, "test", _group_keys(ids, groups)) < test_fraction


def choose_shard(ids: Iterable[str], shard_fraction: float, seed: int, groups: Iterable | None = None) -> np.ndarray:
    """True for the shard: whole groups in order of their key's hash, as many as bring the pair count closest
    to ``max(1, round(shard_fraction * n))``; at least one group.

    ``shard_fraction`` is a share of pairs, not of groups: the shard is the working set the annotation budget and
    the compute scale with, so its size in pairs should not depend on how the pairs are grouped. Without
    ``groups`` (every pair its own group) the shard is exactly that many pairs, those with the smallest hash of
    their id. Ties in distance go to the smaller shard. ``groups`` as in :func:`split_test` (salt ``"shard"``).
    """
    return shard_by_draw(hash_unit(seed, "shard", _group_keys(ids, groups)), shard_fraction)


def shard_by_draw(shard_draw: np.ndarray, shard_fraction: float) -> np.ndarray:
    """:func:`choose_shard` from each pair's group hash (``hash_unit(seed, "shard", group key)``): the hash
    names the group (two keys with one 53-bit hash would count as one group) and orders the groups."""
    shard_draw = np.asarray(shard_draw, dtype=float)
    if len(shard_draw) == 0:
        return np.zeros(0, dtype=bool)
    codes, uniques = pd.factorize(shard_draw)
    order = np.argsort(uniques, kind="stable")
    pairs_so_far = np.cumsum(np.bincount(codes, minlength=len(uniques))[order])
    target = max(1, round(shard_fraction * len(shard_draw)))
    count = int(np.argmin(np.abs(pairs_so_far - target))) + 1
    chosen = np.zeros(len(uniques), dtype=bool)
    chosen[order[:count]] = True
    return chosen[codes]


def group_draws(pairs: pd.DataFrame, data: DataConfig, seed: int) -> dict[str, np.ndarray]:
    """Each pair's group hashes that decide its splits: ``test_draw`` (salt ``"test"``) and ``shard_draw``
    (salt ``"shard"``), grouped by ``data.group_column``. A missing column is a
    :class:`~rlthf.config.ConfigError` naming ``data.group_column``."""
    if data.group_column not in pairs.columns:
        raise ConfigError(f"data.group_column: the pairs have no column {data.group_column!r}; "
                          f"they have {', '.join(pairs.columns)}")
    keys = _group_keys(pairs["id"].to_numpy(), pairs[data.group_column].to_numpy(dtype=object))
    return {"test_draw": hash_unit(seed, "test", keys), "shard_draw": hash_unit(seed, "shard", keys)}


def split_by_draws(test_draw: np.ndarray, shard_draw: np.ndarray, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """``is_test`` and ``in_shard`` from :func:`group_draws`: the test split as :func:`split_test`, the shard
    as :func:`choose_shard` among the other pairs."""
    is_test = np.asarray(test_draw, dtype=float) < data.test_fraction
    train = np.flatnonzero(~is_test)
    in_shard = np.zeros(len(is_test), dtype=bool)
    in_shard[train[shard_by_draw(np.asarray(shard_draw, dtype=float)[train], data.shard_fraction)]] = True
    return is_test, in_shard


def split_and_shard(pairs: pd.DataFrame, data: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's ``is_test`` and ``in_shard`` per row, grouped by ``data.group_column``: the test split by
    :func:`split_test`, the shard by :func:`choose_shard` among the other pairs. A missing column is a
    :class:`~rlthf.config.ConfigError` naming ``data.group_column``."""
    draws = group_draws(pairs, data, seed)
    return split_by_draws(draws["test_draw"], draws["shard_draw"], data)


def _group_keys(ids: Iterable[str], groups: Iterable | None) -> np.ndarray:
    """The key each pair is split by, as text: its group's ``str()``, or its id without groups."""
    if isinstance(ids, str):
        raise TypeError("ids must be a collection of ids, not one string")
    ids = np.asarray(list(ids), dtype=object)
    if groups is None:
        return np.array([str(i) for i in ids], dtype=object)
    groups = list(groups)
    if len(groups) != len(ids):
        raise ValueError(f"groups has {len(groups)} values for {len(ids)} ids")
    missing = [i for i, g in enumerate(groups) if _is_null(g)]
    if missing:
        raise ValueError(f"groups: pair {ids[missing[0]]!r} has no group ({len(missing)} pairs without one)")
    return np.array([str(g) for g in groups], dtype=object)


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


class _Reject(Exception):
    """Raised by the record parsers; :func:`read_pairs` adds the source and line."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field, self.reason = field, reason


def _check_read_options(format: str, on_invalid: str, label_columns: Sequence[str],
                        margin_columns: Sequence[str]) -> None:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if on_invalid not in ("skip", "error"):
        raise ValueError(f"on_invalid must be 'skip' or 'error'; got {on_invalid!r}")
    for role, columns in (("label", label_columns), ("margin", margin_columns)):
        if isinstance(columns, str):
            raise TypeError(f"{role}_columns must be a sequence of column names, not one string")
        clashes = [c for c in columns if c in PAIR_COLUMNS]
        if clashes:
            raise ValueError(f"{role} column {clashes[0]!r} is a pair column, not an AI {role} column")


def _read_records(source: str, rows: Iterator[tuple[int, Any]], style: str, *, seed: int, on_invalid: str,
                  max_pairs: int | None, label_columns: tuple[str, ...], group_column: str | None,
                  rejected: list[InvalidRecord], margin_columns: tuple[str, ...] = ()) -> Iterator[tuple[dict, dict]]:
    """The valid pairs with their extra fields (empty for ``hh_rlhf``), in file order; the rejected records
    are appended to ``rejected`` as they are met."""
    parse = _parse_transcripts if style == "hh_rlhf" else _parse_pairs
    seen = _SeenIds()
    for line, row in rows:
        if max_pairs is not None and len(seen) >= max_pairs:
            break
        try:
            record = _as_record(row)
            pair = parse(record, seed)
            extra = _extra_fields(record, label_columns, group_column, margin_columns) if style == "pairs" else {}
            first = seen.line_of(pair["id"])
            if first is not None:
                raise _Reject("id", f"duplicate of line {first}")
        except _Reject as bad:
            error = InvalidRecord(source, line, bad.field, bad.reason)
            if on_invalid == "error":
                raise error from None
            rejected.append(error)
            continue
        seen.add(pair["id"], line)
        yield pair, extra


class _SeenIds:
    """The pair ids read so far, each with its line, for the duplicate check. An id is 16 hex digits
    (:func:`pair_id`), so it is kept as one uint64 in a sorted numpy array, beside its line: 16 bytes a pair,
    where a dict of a million Python strings cost the reader about 130 MB. The latest ids wait in a small dict
    and join the arrays a batch at a time."""

    def __init__(self, batch: int = 16_384) -> None:
        self.keys, self.lines = np.empty(0, np.uint64), np.empty(0, np.int64)
        self.recent: dict[int, int] = {}
        self.batch = batch

    def __len__(self) -> int:
        return len(self.keys) + len(self.recent)

    def line_of(self, pid: str) -> int | None:
        """The line of the first pair read with id ``pid``, or None."""
        key = int(pid, 16)
        line = self.recent.get(key)
        if line is not None:
            return line
        at = int(np.searchsorted(self.keys, np.uint64(key)))
        return int(self.lines[at]) if at < len(self.keys) and int(self.keys[at]) == key else None

    def add(self, pid: str, line: int) -> None:
        self.recent[int(pid, 16)] = line
        if len(self.recent) >= self.batch:
            keys = np.fromiter(self.recent, np.uint64, len(self.recent))
            lines = np.fromiter(self.recent.values(), np.int64, len(self.recent))
            order = np.argsort(keys)
            at = np.searchsorted(self.keys, keys[order])
            self.keys, self.lines = np.insert(self.keys, at, keys[order]), np.insert(self.lines, at, lines[order])
            self.recent = {}


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
    split = split_transcript(transcript)
    if split is None:
        raise _Reject(field, f"no {ASSISTANT_TURN!r} turn in the transcript")
    return split


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


def _pairs_frame(pairs: list[dict], extras: list[dict], names: Sequence[str] = PAIR_COLUMNS) -> pd.DataFrame:
    columns = {}
    for name in names:
        dtype = object if name in LABEL_COLUMNS else str  # object: None stays None instead of becoming NaN
        columns[name] = pd.Series([p[name] for p in pairs], dtype=dtype)
    for name in dict.fromkeys(name for extra in extras for name in extra):  # first appearance, no repeats
        columns[name] = _extra_series([extra.get(name) for extra in extras])
    return pd.DataFrame(columns)


# Extra columns: a generic record's other fields.

def _extra_fields(record: dict, label_columns: tuple[str, ...], group_column: str | None,
                  margin_columns: tuple[str, ...] = ()) -> dict:
    """The record's fields beyond ``PARSED_FIELDS``, renamed off the pair columns, with the label columns
    checked and lower-cased, the margin columns checked and made floats, and the group checked; a _Reject names
    the first bad field."""
    extra = {_extra_name(name, record): value for name, value in record.items() if name not in PARSED_FIELDS}
    for column in label_columns:
        if column in extra:
            extra[column] = _ai_label(extra[column], column)
    for column in margin_columns:
        if column in extra:
            extra[column] = _ai_margin(extra[column], column)
    if group_column is not None and group_column not in PAIR_COLUMNS and _is_null(extra.get(group_column)):
        raise _Reject(group_column, "missing or null: every pair needs a group (the group column, "
                                    "data.group_column)")
    return {name: _cell(value) for name, value in extra.items()}


def _extra_name(name: str, record: dict) -> str:
    """``name``, or ``record_`` + name (repeated until free) when it is a pair column such as ``id``."""
    if name not in PAIR_COLUMNS:
        return name
    renamed = RECORD_PREFIX + name
    while renamed in record or renamed in PAIR_COLUMNS:
        renamed = RECORD_PREFIX + renamed
    return renamed


def _ai_label(value: Any, column: str) -> str | None:
    if _is_null(value):
        return None
    if isinstance(value, str) and value.lower() in VERDICTS:
        return value.lower()
    raise _Reject(column, f"expected 'a', 'b', 'tie' or null (in any case), got {value!r}")


def _ai_margin(value: Any, column: str) -> float:
    if _is_null(value):
        return math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value):
        return float(value)
    raise _Reject(column, f"expected a finite number (the judge's log-probability margin) or null, got {value!r}")


def _cell(value: Any) -> Any:
    """A scalar as it is, a list or an object as JSON text, anything else (a date, bytes) as its str()."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _extra_series(values: list) -> pd.Series:
    """One extra column; a mix of strings, numbers and booleans (not one Parquet type) becomes text."""
    present = [v for v in values if not _is_null(v)]
    kinds = {type(v) if isinstance(v, (str, bool)) else float for v in present}
    if len(kinds) > 1:
        return pd.Series([None if _is_null(v) else v if isinstance(v, str) else json.dumps(v) for v in values],
                         dtype=object)
    if len(present) == len(values):
        return pd.Series(values)
    if kinds == {float} and all(isinstance(v, int) for v in present):
        return pd.Series(values, dtype="Int64")  # integers stay integers beside a null
    return pd.Series(values, dtype=float if kinds == {float} else object)  # None stays None beside text


def _arrow_table(pairs: pd.DataFrame):
    """``pairs`` as an Arrow table: the pair columns as strings (all-None label columns too, which pandas
    would leave untyped: Python objects in Ray, null in Parquet), the extras as inferred, with text (and an
    all-null column) as ``string`` like the pair columns, not pandas' ``large_string``."""
    import pyarrow as pa

    def as_text(t: pa.DataType) -> bool:
        return pa.types.is_null(t) or pa.types.is_large_string(t)

    extras = pa.Schema.from_pandas(pairs.drop(columns=list(PAIR_COLUMNS)), preserve_index=False)
    fields = [pa.field(name, pa.string()) for name in PAIR_COLUMNS]
    fields += [pa.field(f.name, pa.string() if as_text(f.type) else f.type) for f in extras]
    return pa.Table.from_pandas(pairs, schema=pa.schema(fields), preserve_index=False)
