"""A run's pairs on disk. ``data/pairs.parquet`` holds what the driver keeps of every pair: its id, labels, extra
columns, split, shard and ground truth; ``data/texts.parquet`` holds the prompts and responses, written as the
data is read, and read back only where a step needs them: the pairs a human or a judge is shown, a reward
model's training rows, and the corpus streamed through Ray Data for scoring and the curated file."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from rlthf.core.labels import PAIR_TEXT
from rlthf.rundir import RunDir

TEXTS = ("data", "texts.parquet")
# Up to this many rows a step reads their texts in the driver and hands Ray one block (fast, bounded memory);
# past it the texts stream from Parquet to the workers and never reach the driver.
DRIVER_ROWS = 20_000


def texts_path(rd: RunDir) -> Path:
    return rd.path(*TEXTS)


def read_pairs_index(rd: RunDir) -> pd.DataFrame:
    """``data/pairs.parquet``. A run directory written before the texts had a file of their own keeps them
    there: they move to ``data/texts.parquet`` first, so such a run resumes."""
    from rlthf.rundir import atomic_write_parquet

    path = rd.path("data", "pairs.parquet")
    pairs = pd.read_parquet(path)
    if "prompt" in pairs.columns:
        write_texts(rd, pairs)
        pairs = pairs.drop(columns=list(PAIR_TEXT[1:]))
        atomic_write_parquet(path, pairs)
    return pairs


def write_texts(rd: RunDir, pairs: pd.DataFrame) -> None:
    """``data/texts.parquet`` from a frame that has the texts (``prepare`` streams them there as it reads; a
    run directory put together by hand, as a test's, writes them with this)."""
    from rlthf.rundir import atomic_write_parquet

    atomic_write_parquet(texts_path(rd), pairs[list(PAIR_TEXT)].reset_index(drop=True))


def pair_texts(rd: RunDir, ids) -> pd.DataFrame:
    """``id, prompt, response_a, response_b`` of the pairs ``ids`` (repeats allowed), in that order."""
    import pyarrow.parquet as pq

    ids = pd.Series(ids, dtype=object).reset_index(drop=True)
    wanted = pd.unique(ids.to_numpy())
    table = pq.read_table(texts_path(rd), filters=[("id", "in", list(wanted))]) if len(wanted) else None
    texts = (table.to_pandas() if table is not None else pd.DataFrame(columns=list(PAIR_TEXT))).set_index("id")
    missing = ~pd.Index(wanted).isin(texts.index)
    if missing.any():
        raise KeyError(f"{texts_path(rd)} has no texts for pair {wanted[missing][0]!r}")
    return texts.reindex(ids.to_numpy()).rename_axis("id").reset_index()[list(PAIR_TEXT)]


def with_texts(rd: RunDir, pairs: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` (rows with an ``id``; repeats allowed) with their ``prompt``, ``response_a`` and
    ``response_b``, in the order of ``pairs``."""
    texts = pair_texts(rd, pairs["id"])
    return pairs.assign(**{column: texts[column].to_numpy() for column in PAIR_TEXT[1:]})


def texts_dataset(rd: RunDir, ids=None):
    """``id, prompt, response_a, response_b`` streamed from Parquet as a Ray Dataset: every pair's, or those of
    ``ids`` (in file order: a consumer keys its results by id)."""
    import ray.data

    dataset = ray.data.read_parquet(str(texts_path(rd)))
    if ids is None:
        return dataset
    wanted = pa_strings(pd.unique(pd.Series(ids, dtype=object).to_numpy()))
    return dataset.map_batches(keep_ids, fn_kwargs={"wanted": wanted}, batch_format="pyarrow")


def keep_ids(batch, wanted):
    """The rows of an Arrow batch whose ``id`` is in ``wanted``."""
    import pyarrow.compute as pc

    return batch.filter(pc.is_in(batch["id"], value_set=wanted))


def pairs_dataset(rd: RunDir, rows: pd.DataFrame):
    """``rows`` (an ``id`` and any other columns; repeats allowed) with their texts, as a Ray Dataset: read here
    up to ``DRIVER_ROWS`` rows (in the order of ``rows``), past it joined on in a stream (in no set order; a
    consumer that needs one keeps a column that says it, as the training rows' ``row``)."""
    import pyarrow as pa
    import ray.data

    if len(rows) <= DRIVER_ROWS:
        return ray.data.from_pandas(with_texts(rd, rows.reset_index(drop=True)))
    table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
    return texts_dataset(rd, rows["id"]).map_batches(attach_rows, fn_kwargs={"rows": table}, batch_format="pandas")


def attach_rows(batch: pd.DataFrame, rows) -> pd.DataFrame:
    """A batch of texts joined with the rows of an Arrow table that name its ids (each text once per row)."""
    return batch.merge(rows_with_ids(rows, batch["id"]), on="id", how="inner")


def rows_with_ids(table, ids) -> pd.DataFrame:
    """The rows of an Arrow table whose ``id`` is one of ``ids``, as pandas (a batch's share of a broadcast
    table, converted without the rest)."""
    import pyarrow.compute as pc

    return table.filter(pc.is_in(table["id"], value_set=pa_strings(ids))).to_pandas()


def pa_strings(values):
    import pyarrow as pa

    return pa.array(pd.Series(values, dtype=object).to_numpy(), pa.string())


def write_curated(rd: RunDir, path: Path, curated: pd.DataFrame) -> None:
    """``curated.parquet``: TRL's ``prompt, chosen, rejected`` and ``id, label_source, reward_margin,
    in_shard`` of every pair of ``curated`` (``id, label, label_source, reward_margin, in_shard``), its texts
    joined on in a Ray Data stream and written batch by batch (in the order of ``data/texts.parquet``), so the
    corpus's texts never gather in one process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlthf.rundir import replace_when_done

    table = pa.Table.from_pandas(curated.reset_index(drop=True), preserve_index=False)
    stream = texts_dataset(rd, curated["id"]).map_batches(preference_rows, fn_kwargs={"curated": table},
                                                          batch_format="pandas")
    stream.context.execution_options.preserve_order = True  # the same file from the same run
    with replace_when_done(path) as partial:
        writer = None
        for batch in stream.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer = writer or pq.ParquetWriter(partial, batch.schema)
            writer.write_table(batch)
        if writer is None:  # an empty corpus still gets its file
            preference_rows(pd.DataFrame(columns=list(PAIR_TEXT)), table).to_parquet(partial, index=False)
        else:
            writer.close()


def preference_rows(batch: pd.DataFrame, curated) -> pd.DataFrame:
    """A batch of texts as curated preference rows (:func:`rlthf.core.working_labels.preference_pairs`)."""
    from rlthf.core.working_labels import preference_pairs

    labels = rows_with_ids(curated, batch["id"]).set_index("id").reindex(batch["id"].to_numpy())
    rows = preference_pairs(batch.reset_index(drop=True), labels["label"].to_numpy(dtype=object),
                            labels["label_source"].to_numpy(dtype=object), labels["reward_margin"].to_numpy())
    return rows.assign(in_shard=labels["in_shard"].to_numpy(dtype=bool))
