"""A run's pairs on disk. ``data/pairs.parquet`` holds what the driver keeps of every pair: its id, labels, extra
columns, split, shard and ground truth; ``data/texts.parquet`` holds the prompts and responses, written as the
data is read, and read back only where a step needs them: the pairs a human or a judge is shown, a reward
model's training and scoring rows (streamed through Ray Data past ``DRIVER_ROWS``; a large run's reward model
reads its pairs' features from ``data/features-<key>/`` instead, keyed by id the same way), and the curated file,
written a row group at a time."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlthf.core.labels import PAIR_TEXT
from rlthf.rundir import RunDir

TEXTS = ("data", "texts.parquet")
# Up to this many rows a step reads their texts in the driver and hands Ray one block (fast, bounded memory);
# past it the texts stream from Parquet to the workers and never reach the driver.
DRIVER_ROWS = 20_000


def beyond_driver(rows: int) -> bool:
    """Whether a step's rows are too many to read here (``DRIVER_ROWS``): they stream to Ray's workers."""
    return rows > DRIVER_ROWS


def texts_path(rd: RunDir) -> Path:
    """Where this process writes the texts (the run directory)."""
    return rd.path(*TEXTS)


def texts_location(rd: RunDir) -> str:
    """Where every reader, Ray's workers on any node included, reads the texts: the run's mirror when it has
    one (``storage_path``), else the run directory."""
    return rd.shared(*TEXTS)


def read_pairs_index(rd: RunDir, columns=None) -> pd.DataFrame:
    """``data/pairs.parquet`` (only ``columns``, if given). A run directory written before the texts had a file of
    their own keeps them there: they move to ``data/texts.parquet`` first, so such a run resumes."""
    import pyarrow.parquet as pq

    from rlthf.rundir import atomic_write_parquet

    path = rd.path("data", "pairs.parquet")
    names = pq.read_schema(path).names
    if "prompt" in names:
        pairs = pd.read_parquet(path)
        write_texts(rd, pairs)
        atomic_write_parquet(path, pairs.drop(columns=list(PAIR_TEXT[1:])))
    # (a run directory of an older rlthf may lack a column that a newer one keeps: its readers do without it)
    return pd.read_parquet(path, columns=None if columns is None else [c for c in columns if c in names])


def write_texts(rd: RunDir, pairs: pd.DataFrame) -> None:
    """``data/texts.parquet`` from a frame that has the texts (``prepare`` streams them there as it reads; a
    run directory put together by hand, as a test's, writes them with this)."""
    from rlthf.rundir import atomic_write_parquet

    atomic_write_parquet(texts_path(rd), pairs[list(PAIR_TEXT)].reset_index(drop=True))
    rd.share(*TEXTS)


def pair_texts(rd: RunDir, ids) -> pd.DataFrame:
    """``id, prompt, response_a, response_b`` of the pairs ``ids`` (repeats allowed), in that order."""
    return rows_by_id(texts_location(rd), ids)[list(PAIR_TEXT)]


def rows_by_id(path: Path, ids) -> pd.DataFrame:
    """The rows of the Parquet file or folder ``path`` (keyed by ``id``) for ``ids`` (repeats allowed), in that
    order. It reads the ids a row group at a time and the rest of a group only where one matches, so a few
    thousand pairs of a corpus of millions cost about a row group of memory."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    ids = pd.Series(ids, dtype=object).reset_index(drop=True)
    wanted = pd.unique(ids.to_numpy())
    dataset = pads.dataset(path, format="parquet")
    value_set, parts = pa_strings(wanted), []
    for fragment in dataset.get_fragments() if len(wanted) else ():
        for group in fragment.split_by_row_group():
            match = pc.is_in(group.to_table(columns=["id"])["id"], value_set=value_set)
            if pc.any(match).as_py():
                parts.append(group.to_table(schema=dataset.schema).filter(match))
    found = pa.concat_tables(parts).to_pandas() if parts else pd.DataFrame(columns=dataset.schema.names)
    found = found.drop_duplicates("id").set_index("id")  # a folder written by a stream may hold a row twice
    missing = ~pd.Index(wanted).isin(found.index)
    if missing.any():
        raise KeyError(f"{path} has no row for pair {wanted[missing][0]!r}")
    return found.reindex(ids.to_numpy()).rename_axis("id").reset_index()


def with_texts(rd: RunDir, pairs: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` (rows with an ``id``; repeats allowed) with their ``prompt``, ``response_a`` and
    ``response_b``, in the order of ``pairs``."""
    return with_columns(texts_location(rd), pairs)


def with_columns(path: Path, pairs: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` with the other columns of their rows in the Parquet file or folder ``path`` (keyed by ``id``)."""
    found = rows_by_id(path, pairs["id"])
    return pairs.assign(**{column: found[column].to_numpy() for column in found.columns if column != "id"})


def texts_dataset(rd: RunDir, ids=None):
    """``id, prompt, response_a, response_b`` streamed from Parquet as a Ray Dataset: every pair's, or those of
    ``ids`` (in file order: a consumer keys its results by id)."""
    return rows_dataset(texts_location(rd), ids)


def rows_dataset(path: Path, ids=None):
    """The rows of the Parquet file or folder ``path``, or those whose ``id`` is one of ``ids``, streamed as a
    Ray Dataset in file order."""
    import ray.data

    dataset = ray.data.read_parquet(str(path))
    if ids is None:
        return dataset
    import pyarrow.compute as pc

    wanted = pc.unique(pa_strings(ids))
    return dataset.map_batches(keep_ids, fn_kwargs={"wanted": wanted}, batch_format="pyarrow")


def keep_ids(batch, wanted):
    """The rows of an Arrow batch whose ``id`` is in ``wanted``."""
    import pyarrow.compute as pc

    return batch.filter(pc.is_in(batch["id"], value_set=wanted))


def pairs_dataset(rd: RunDir, rows: pd.DataFrame, source: Path | None = None):
    """``rows`` (an ``id`` and any other columns; repeats allowed) with their texts (or the columns of their
    rows in ``source``, a Parquet file or folder keyed by ``id``: the pairs' features), as a Ray Dataset: read
    here up to ``DRIVER_ROWS`` rows (in the order of ``rows``), past it joined on in a stream (in no set order; a
    consumer that needs one keeps a column that says it, as the training rows' ``row``). Past it, rows of an
    ``id`` alone are pairs to score: each comes once, as the source has it."""
    import pyarrow as pa
    import ray.data

    source = source or texts_location(rd)
    if not beyond_driver(len(rows)):
        return ray.data.from_pandas(with_columns(source, rows.reset_index(drop=True)))
    if list(rows.columns) == ["id"]:  # pairs to score, each once: their rows as the file has them
        return rows_dataset(source, rows["id"])
    table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
    return rows_dataset(source, rows["id"]).map_batches(attach_rows, fn_kwargs={"rows": table},
                                                        batch_format="pandas")


def attach_rows(batch: pd.DataFrame, rows) -> pd.DataFrame:
    """A batch of texts joined with the rows of an Arrow table that name its ids (each text once per row)."""
    return batch.merge(rows_with_ids(rows, batch["id"]), on="id", how="inner")


def rows_with_ids(table, ids) -> pd.DataFrame:
    """The rows of an Arrow table whose ``id`` is one of ``ids``, as pandas (a batch's share of a broadcast
    table, converted without the rest)."""
    import pyarrow.compute as pc

    return table.filter(pc.is_in(table["id"], value_set=pa_strings(ids))).to_pandas()


def pa_strings(values):
    """``values`` (ids) as one Arrow string array. A pandas column of strings is Arrow already and is not copied
    through Python objects (a million ids as Python strings cost about 70 MB)."""
    import pyarrow as pa

    array = pa.array(values if isinstance(values, pd.Series) else pd.Series(values, dtype="str"))
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    # (an empty column of objects comes as Arrow's null type, which no string matches against)
    return array if pa.types.is_string(array.type) or pa.types.is_large_string(array.type) else array.cast(pa.string())


def column_by_id(frame: pd.DataFrame, column: str, ids) -> np.ndarray:
    """``frame[column]`` at the row of each of ``ids`` (keyed by ``frame["id"]``; None where it has none), as an
    object array, found by an Arrow hash of the ids where pandas would index them as Python strings."""
    return columns_by_id(frame, [column], ids)[column]


def columns_by_id(frame: pd.DataFrame, columns, ids) -> dict[str, np.ndarray]:
    """:func:`column_by_id` of each of ``columns``, the ids hashed once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids, keys = pa_strings(ids), pa_strings(frame["id"])
    # (a frame written in the order asked for, as the AI labels are, needs no hash)
    rows = None if ids.equals(keys) else pc.index_in(ids, value_set=keys)
    values = {column: pa.array(frame[column]) for column in columns}
    return {column: numpy_values(array if rows is None else array.take(rows)) for column, array in values.items()}


def numpy_values(array) -> np.ndarray:
    """An Arrow array (or a pandas column) as numpy; strings as objects, one Python string per distinct value and
    None where null. Arrow's own ``to_numpy`` makes a Python string per row, about 50 bytes each: 50 MB for a
    million labels of two values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = pa.array(array) if isinstance(array, pd.Series) else array
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return array.to_numpy(zero_copy_only=False)
    encoded = pc.dictionary_encode(array)
    values = np.append(encoded.dictionary.to_numpy(zero_copy_only=False), None)
    return values[encoded.indices.fill_null(len(encoded.dictionary)).to_numpy()]


def has_id(ids, among) -> np.ndarray:
    """Whether each of ``ids`` is one of ``among``, by an Arrow hash (pandas' ``isin`` makes Python strings)."""
    import pyarrow.compute as pc

    return pc.is_in(pa_strings(ids), value_set=pa_strings(among)).to_numpy(zero_copy_only=False)


def write_curated(rd: RunDir, path: Path, curated: pd.DataFrame) -> None:
    """``curated.parquet``: TRL's ``prompt, chosen, rejected`` and ``id, label_source, reward_margin,
    in_shard`` of every pair of ``curated`` (``id, label, label_source, reward_margin, in_shard``, and where
    known ``text_row``, the pair's row in ``data/texts.parquet``), in the order of ``data/texts.parquet`` (the
    data file's), written a row group of texts at a time: this process holds the curated labels (a few numbers
    a pair) and one row group, never the corpus's texts."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rlthf.rundir import replace_when_done

    texts = pq.ParquetFile(texts_location(rd))
    position = curated_rows(texts, curated.reset_index(drop=True))
    table = pa.Table.from_pandas(curated.drop(columns="text_row", errors="ignore").reset_index(drop=True),
                                 preserve_index=False)
    with replace_when_done(path) as partial:
        writer, start = None, 0
        for group in range(texts.num_row_groups):
            batch = texts.read_row_group(group)
            here = position.slice(start, batch.num_rows)
            start += batch.num_rows
            curated_here = pc.is_valid(here)
            if pc.any(curated_here).as_py():
                rows = preference_rows(batch.filter(curated_here), table.take(here.filter(curated_here)))
                writer = writer or pq.ParquetWriter(partial, rows.schema)
                writer.write_table(rows.cast(writer.schema))
        if writer is None:  # an empty corpus still gets its file
            empty = pa.table({column: pa.array([], pa.string()) for column in PAIR_TEXT})
            pq.write_table(preference_rows(empty, table.slice(0, 0)), partial)
        else:
            writer.close()


def curated_rows(texts, curated: pd.DataFrame):
    """Each row of the texts file ``texts``: its pair's row in ``curated`` (null for a pair it lacks, as a test
    pair), from their ``text_row`` where ``curated`` has it, else by a hash of the file's ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "text_row" not in curated:
        return pc.index_in(texts.read(columns=["id"])["id"], value_set=pa_strings(curated["id"]))
    position = np.full(texts.metadata.num_rows, -1, dtype=np.int64)
    position[curated["text_row"].to_numpy()] = np.arange(len(curated))
    return pa.array(position, mask=position < 0)


def preference_rows(texts, labels):
    """TRL's ``prompt, chosen, rejected`` from Arrow rows of texts (``id, prompt, response_a, response_b``) and
    their curated labels (``label, label_source, reward_margin, in_shard``), row for row, with ``id``,
    ``label_source``, the reward margin of the chosen response and ``in_shard``. In Arrow: a row group's texts as
    pandas would be Python strings, which glibc hands back to the system slowly (the driver's resident memory grew
    by about 100 MB over a million pairs' row groups)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    a_wins = pc.fill_null(pc.equal(labels["label"], "a"), False)  # (as b's: a pair without a label has no order)
    return pa.table({
        "prompt": texts["prompt"],
        "chosen": pc.if_else(a_wins, texts["response_a"], texts["response_b"]),
        "rejected": pc.if_else(a_wins, texts["response_b"], texts["response_a"]),
        "id": texts["id"], "label_source": labels["label_source"].cast(pa.string()),
        "reward_margin": labels["reward_margin"].cast(pa.float64()), "in_shard": labels["in_shard"].cast(pa.bool_())})
