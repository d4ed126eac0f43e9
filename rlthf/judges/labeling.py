"""Initial alignment (paper section 3.1): an LLM judge labels every pair, streamed through Ray Data.

Every verdict is keyed by (pair id, order, model, prompt-template hash, judge parameters) and lands in the
verdict cache (:mod:`rlthf.judges.cache`, Parquet parts) a batch at a time as it comes back, so a rerun or a
resumed run never pays twice for a verdict and a crash mid-labeling loses only the batch in flight. Transient
failures (rate limits, 5xx, timeouts) are recorded but asked again on the next run. Two passes, neither of which
collects the pairs on the driver:

1. *ask*: the keys of the pairs' requests that the cache does not serve come from a left-anti join of the keys
   alone (the driver keeps those missing keys); the requests with those keys are rendered in ``map_batches`` and
   the judge's actors answer them; the workers write their verdicts to the cache.
2. *assemble*: each pair's cache keys are joined on the cache (one left join per order), and a ``map_batches``
   turns the pair's verdicts into its label. The driver streams the labels to a Parquet file and keeps only
   ``id, label, confidence`` and the report's counts.

With ``both_orders`` each pair is judged as (a, b) and as (b, a). Per pair:

- both verdicts agree: that label, confidence ``consistent``;
- they disagree: confidence ``inconsistent``; the label comes from the summed log-probability margin
  ``(lp_A - lp_B)[ab] - (lp_A - lp_B)[ba]`` when the backend scores log-probs (position bias cancels), and is
  left empty otherwise (a guess would be position bias);
- one verdict only (one order asked, or one failed): that label, confidence ``single``;
- none: no label, confidence ``failed``.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from contextlib import nullcontext
from importlib import import_module
from pathlib import Path

import numpy as np
import pandas as pd

from rlthf.cluster.actors import join_partitions, map_on_actor_pool
from rlthf.config import JudgeConfig
from rlthf.judges.base import ORDERS, REQUEST_COLUMNS, VERDICT_COLUMNS, cost, request_key
from rlthf.judges.cache import VerdictCache, cache_key, record_schema, record_table, servable_rows
from rlthf.judges.prompts import render_requests, template_hash
from rlthf.rundir import replace_when_done, write_parquet_part

log = logging.getLogger("rlthf")

BACKENDS = {
    "transformers": "rlthf.judges.transformers_backend:TransformersJudge",
    "openai": "rlthf.judges.openai_backend:OpenAIJudge",
}
VOTE = {"ab": {"A": "a", "B": "b"}, "ba": {"A": "b", "B": "a"}}
CONFIDENCES = ("consistent", "inconsistent", "single", "failed")
PARSE_FAILURES = ("unparseable answer", "truncated answer")
# what a pair's label row keeps of its verdict in each order (suffixed _ab, _ba)
JOINED_FIELDS = ("preference", "raw", "logprob_a", "logprob_b", "prompt_tokens", "completion_tokens", "error")


def backend_class(name: str):
    if name not in BACKENDS:
        raise ValueError(f"judge.backend {name!r} has no Ray Data callable class; one of {sorted(BACKENDS)}")
    module, attr = BACKENDS[name].split(":")
    return getattr(import_module(module), attr)


def judge_params(config: JudgeConfig) -> dict:
    """What changes a verdict besides the pair, the model and the prompt text: part of the cache key."""
    return {"backend": config.backend, "mode": config.mode, "temperature": config.temperature,
            "max_new_tokens": config.max_new_tokens, "gguf_file": config.gguf_file}


def judge_orders(config: JudgeConfig) -> tuple[str, ...]:
    return ORDERS if config.both_orders else ("ab",)


def run_judge(requests, config: JudgeConfig):
    """The configured backend's verdicts on a Dataset of requests (a lazy Dataset)."""
    if config.backend == "vllm":
        from rlthf.judges.vllm_backend import vllm_verdicts

        return vllm_verdicts(requests, config)
    return map_on_actor_pool(requests, backend_class(config.backend), {"config": config}, config)


def verdict_keys(pair_ids, orders, config: JudgeConfig, template: str) -> list[str]:
    """The cache keys of ``pair_ids``' requests in ``orders`` (one order for all, or one a pair)."""
    params = judge_params(config)
    orders = [orders] * len(pair_ids) if isinstance(orders, str) else orders
    return [cache_key(str(pid), order, config.model, template, params) for pid, order in zip(pair_ids, orders)]


def request_keys(batch: pd.DataFrame, config: JudgeConfig, template: str) -> pd.DataFrame:
    """The cache keys of a batch of pairs' requests (one or two a pair), without rendering them."""
    return pd.DataFrame({"cache_key": [key for order in judge_orders(config)
                                       for key in verdict_keys(batch["id"], order, config, template)]})


def request_rows(batch: pd.DataFrame, config: JudgeConfig, template: str, wanted=None) -> pd.DataFrame:
    """A batch of pairs as the judge requests they make (``REQUEST_COLUMNS``); only those whose cache key is one
    of ``wanted`` (an Arrow array) when it is given, rendering only their pairs."""
    import pyarrow.compute as pc

    # a row a pair, a column an order: render_requests' order, each pair's orders in turn
    keys = np.column_stack([verdict_keys(batch["id"], order, config, template) for order in judge_orders(config)])
    asked = np.ones(keys.shape, dtype=bool)
    if wanted is not None:
        asked = pc.is_in(keys.ravel(), value_set=wanted).to_numpy(zero_copy_only=False).reshape(keys.shape)
        batch, asked = batch[asked.any(axis=1)], asked[asked.any(axis=1)]
    requests = pd.DataFrame(render_requests(batch, config), columns=list(REQUEST_COLUMNS))
    return requests[asked.ravel()].reset_index(drop=True)


def write_verdicts(batch: dict[str, np.ndarray], root: str, config: JudgeConfig, template: str) -> dict:
    """Write a batch of fresh verdicts to the cache at ``root`` as one part; pass on what the driver counts."""
    records = pd.DataFrame({column: batch[column] for column in VERDICT_COLUMNS})
    records["cache_key"] = verdict_keys(records["pair_id"], records["order"], config, template)
    records["model"], records["template_hash"] = config.model, template
    write_parquet_part(root, record_table(records))
    return {"key": batch["key"], "error": batch["error"], "retryable": batch["retryable"]}


def missing_keys(pairs, config: JudgeConfig, cache: VerdictCache, template: str, partitions: int):
    """The cache keys of ``pairs``' requests that the cache does not serve, as an Arrow array (a left-anti join
    of the keys alone, so no prompt is rendered for a request the cache serves); None while the cache is empty."""
    import pyarrow as pa

    served = cache.dataset()
    if served is None:
        return None
    keys = pairs.select_columns(["id"]).map_batches(request_keys, fn_kwargs={"config": config, "template": template},
                                                    batch_format="pandas")
    missing = keys.join(served.select_columns(["cache_key"]), join_type="left_anti", num_partitions=partitions,
                        on=("cache_key",))
    chunks = [batch["cache_key"].cast(pa.string()) for batch in missing.iter_batches(batch_size=None,
                                                                                      batch_format="pyarrow")]
    return pa.chunked_array(chunks, pa.string()).combine_chunks()


def ask_missing(pairs, config: JudgeConfig, cache: VerdictCache, template: str, partitions: int,
                pair_count: int) -> tuple[int, dict]:
    """Pass 1: judge the requests of ``pairs`` that the cache does not serve. Returns how many were asked and
    this run's transient failures (request key: error), which the cache does not serve."""
    from tqdm.auto import tqdm

    wanted = missing_keys(pairs, config, cache, template, partitions)
    missing = pair_count * len(judge_orders(config)) if wanted is None else len(wanted)
    if not missing:
        return 0, {}
    log.info("judging %d requests with %s (%s)", missing, config.model, config.backend)
    requests = pairs.map_batches(request_rows, fn_kwargs={"config": config, "template": template, "wanted": wanted},
                                 batch_format="pandas")
    # blocks of a few batches: verdicts stream back, and into the cache, while the rest is judged
    requests = requests.repartition(target_num_rows_per_block=max(config.batch_size * 8, 64))
    written = run_judge(requests, config).map_batches(
        write_verdicts, fn_kwargs={"root": cache.root, "config": config, "template": template},
        batch_size=None, batch_format="numpy")
    failures: dict[str, str] = {}
    with tqdm(total=missing, desc="judge", unit="verdict") as bar:
        for batch in written.iter_batches(batch_size=None, batch_format="numpy"):
            retry = np.asarray(batch["retryable"], dtype=bool)
            failures.update(zip(batch["key"][retry].tolist(), batch["error"][retry].tolist()))
            bar.update(len(batch["key"]))
    return missing, failures


def pair_key_rows(batch: pd.DataFrame, config: JudgeConfig, template: str) -> pd.DataFrame:
    """A batch of pairs as ``id`` (``human_label`` where given) and the cache key of each order's request."""
    rows = batch[[c for c in ("id", "human_label") if c in batch]].copy()
    rows["id"] = rows["id"].astype(str)
    for order in judge_orders(config):
        rows[f"cache_key_{order}"] = verdict_keys(rows["id"], order, config, template)
    return rows


def assemble_labels(pairs, config: JudgeConfig, cache: VerdictCache, template: str, partitions: int,
                    failures: dict):
    """Pass 2: each pair's label from its verdicts in the cache (a lazy Dataset of :func:`pair_labels` rows)."""
    import ray.data

    rows = pairs.select_columns([c for c in ("id", "human_label") if c in pairs.schema().names]).map_batches(
        pair_key_rows, fn_kwargs={"config": config, "template": template}, batch_format="pandas")
    served = cache.dataset()
    served = ray.data.from_arrow(record_schema().empty_table()) if served is None else served
    for order in judge_orders(config):
        right = served.select_columns(["cache_key", *JOINED_FIELDS]).rename_columns(
            {c: f"{c}_{order}" for c in ("cache_key", *JOINED_FIELDS)})
        rows = rows.join(right, join_type="left_outer", num_partitions=partitions, on=(f"cache_key_{order}",))
    return rows.map_batches(pair_labels, fn_kwargs={"failures": failures}, batch_format="pandas")


def pair_labels(rows: pd.DataFrame, failures: dict | None = None) -> pd.DataFrame:
    """One label per pair (rules in the module docstring) from a row per pair holding its served verdict in each
    order (``preference_ab``, ``raw_ab``, ``logprob_a_ab``... null, or no columns, where there is none);
    ``failures``: the error of a request without a served verdict that failed in this run (else "not asked").

    Columns: ``id, label, confidence, preference_<o>, raw_<o>, error_<o>, retryable_<o>`` for both orders,
    ``logprob_margin, prompt_tokens, completion_tokens`` (both orders summed), ``human_label`` where given."""
    failures = failures or {}
    n = len(rows)
    ids = rows["id"].astype(str).to_numpy(dtype=object)
    out = pd.DataFrame({"id": ids})
    votes, margin, has_logprobs = {}, np.zeros(n), np.ones(n, dtype=bool)
    tokens = {"prompt_tokens": np.zeros(n, dtype=np.int64), "completion_tokens": np.zeros(n, dtype=np.int64)}

    def field(name: str, order: str, fill) -> pd.Series:
        column = f"{name}_{order}"
        return rows[column].fillna(fill) if column in rows else pd.Series([fill] * n, index=rows.index)

    for order, sign in (("ab", 1.0), ("ba", -1.0)):
        present = (rows[f"preference_{order}"].notna() if f"preference_{order}" in rows
                   else pd.Series(False, index=rows.index)).to_numpy()
        keys = [request_key(pid, order) for pid in ids]
        out[f"preference_{order}"] = field("preference", order, "").to_numpy(dtype=object)
        out[f"raw_{order}"] = field("raw", order, "").to_numpy(dtype=object)
        out[f"error_{order}"] = np.where(present, field("error", order, "").to_numpy(dtype=object),
                                         np.array([failures.get(k, "not asked") for k in keys], dtype=object))
        out[f"retryable_{order}"] = ~present & np.array([k in failures for k in keys], dtype=bool)
        votes[order] = out[f"preference_{order}"].map(VOTE[order]).to_numpy(dtype=object)
        logprob = (field("logprob_a", order, np.nan) - field("logprob_b", order, np.nan)).to_numpy(dtype=float)
        finite = np.isfinite(logprob)
        margin += np.where(present & finite, sign * np.where(finite, logprob, 0.0), 0.0)
        has_logprobs &= ~present | finite
        for name in tokens:
            tokens[name] += field(name, order, 0).to_numpy(dtype=np.int64)
    ab, ba = (pd.notna(votes[order]) for order in ORDERS)
    agree, disagree, one = ab & ba & (votes["ab"] == votes["ba"]), ab & ba & (votes["ab"] != votes["ba"]), ab ^ ba
    label = np.full(n, None, dtype=object)
    label[agree] = votes["ab"][agree]
    by_margin = disagree & has_logprobs
    label[by_margin] = np.where(margin > 0, "a", np.where(margin < 0, "b", None))[by_margin]
    label[one] = np.where(ab, votes["ab"], votes["ba"])[one]
    out["label"] = pd.Series(label, dtype=object)  # None stays None (pandas 3 would make it NaN)
    out["confidence"] = np.select([agree, disagree, one], list(CONFIDENCES[:3]), CONFIDENCES[3]).astype(object)
    out["logprob_margin"] = np.where(has_logprobs & (ab | ba), margin, np.nan)
    out = out.assign(**tokens)
    if "human_label" in rows:
        out["human_label"] = rows["human_label"].to_numpy(dtype=object)
    return out


def aggregate_verdicts(pair_ids: list[str], verdicts: pd.DataFrame) -> pd.DataFrame:
    """:func:`pair_labels` of ``pair_ids`` from their verdict records (one row a request, as a judge backend
    returns them or the cache holds them; a transient failure counts as this run's)."""
    import pyarrow as pa

    served = servable_rows(pa.Table.from_pandas(verdicts.reset_index(drop=True), preserve_index=False)).to_pandas()
    failed = verdicts[~verdicts["key"].isin(served["key"])]
    rows = pd.DataFrame({"id": [str(pid) for pid in pair_ids]})
    for order in ORDERS:
        mine = served[served["order"] == order].set_index("pair_id")[list(JOINED_FIELDS)]
        rows = rows.join(mine.add_suffix(f"_{order}"), on="id")
    return pair_labels(rows, dict(zip(failed["key"], failed["error"])))


def label_tally(labels: pd.DataFrame) -> Counter:
    """What :func:`judge_report` counts, for a batch of :func:`pair_labels` rows (tallies of batches add up)."""
    tally = Counter({c: int((labels["confidence"] == c).sum()) for c in CONFIDENCES})
    tally.update(pairs=len(labels), labelled=int(labels["label"].notna().sum()),
                 prompt_tokens=int(labels["prompt_tokens"].sum()),
                 completion_tokens=int(labels["completion_tokens"].sum()))
    for order in ORDERS:
        error = labels[f"error_{order}"]
        tally.update(requests=int((error != "not asked").sum()), parse_failures=int(error.isin(PARSE_FAILURES).sum()),
                     errors=int(labels[f"retryable_{order}"].sum()))
    if "human_label" in labels:
        truth = labels["human_label"].to_numpy(dtype=object)
        known = labels["label"].notna().to_numpy() & pd.notna(truth)
        tally.update(truths=int(pd.notna(truth).sum()), accuracy_pairs=int(known.sum()),
                     correct=int((labels["label"].to_numpy(dtype=object)[known] == truth[known]).sum()))
    return tally


def judge_report(tally: Counter, config: JudgeConfig, *, asked: int, seconds: float) -> dict:
    """Parse failures, position consistency, tokens, cost, and accuracy against ``human_label`` where known."""
    both = tally["consistent"] + tally["inconsistent"]
    report = {
        "model": config.model, "backend": config.backend, "mode": config.mode, "pairs": tally["pairs"],
        "requests": tally["requests"], "asked": asked, "from_cache": tally["requests"] - asked,
        "parse_failures": tally["parse_failures"], "errors": tally["errors"],
        "confidence": {c: tally[c] for c in CONFIDENCES if tally[c]},
        "position_consistency": tally["consistent"] / both if both else None,
        "labelled": tally["labelled"], "prompt_tokens": tally["prompt_tokens"],
        "completion_tokens": tally["completion_tokens"], "seconds": round(seconds, 2),
    }
    report["cost"] = cost(report["prompt_tokens"], report["completion_tokens"], config)
    if tally["truths"]:
        report["accuracy"] = tally["correct"] / tally["accuracy_pairs"] if tally["accuracy_pairs"] else None
        report["accuracy_pairs"] = tally["accuracy_pairs"]
    return report


def label_pairs(pairs, config: JudgeConfig, cache_root: str | Path, *, pair_count: int,
                labels_path: str | Path | None = None) -> tuple[pd.DataFrame, dict]:
    """Judge every pair of ``pairs`` (a Ray Dataset of ``id, prompt, response_a, response_b`` and optionally
    ``human_label``; ``pair_count`` of them, with distinct ids) with the verdict cache at ``cache_root``.

    Writes every pair's :func:`pair_labels` row to the Parquet file ``labels_path`` (when given) as it streams
    back; returns ``id, label, confidence`` of each pair (``label`` "a", "b" or None; in no set order) and the
    judge report. Where two runs sharing a cache asked for the same verdict at once it holds two; a pair's
    first label row is kept."""
    started = time.perf_counter()
    cache, template, partitions = VerdictCache(cache_root), template_hash(config), join_partitions(pair_count)
    asked, failures = ask_missing(pairs, config, cache, template, partitions, pair_count)
    labels = assemble_labels(pairs, config, cache, template, partitions, failures)
    kept, tally = [], Counter()
    with LabelsFile(labels_path) as out:
        seen: set[str] = set()
        for batch in labels.iter_batches(batch_size=None, batch_format="pandas"):
            ids = batch["id"].to_numpy(dtype=object)
            batch = batch[~batch["id"].duplicated().to_numpy() & np.fromiter((i not in seen for i in ids), bool, len(ids))]
            seen.update(batch["id"])
            tally.update(label_tally(batch))
            kept.append(batch[["id", "label", "confidence"]])
            out.write(batch)
    kept = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=["id", "label", "confidence"])
    if len(kept) != pair_count:
        raise RuntimeError(f"the judge labelled {len(kept)} of {pair_count} pairs: a verdict was lost")
    report = judge_report(tally, config, asked=asked, seconds=time.perf_counter() - started)
    return kept, report


def label_schema(columns):
    """The Arrow schema of :func:`pair_labels` rows (a batch where every label is None has the same types)."""
    import pyarrow as pa

    def arrow_type(column: str):
        if column.startswith("retryable_"):
            return pa.bool_()
        return {"logprob_margin": pa.float64(), "prompt_tokens": pa.int64(),
                "completion_tokens": pa.int64()}.get(column, pa.string())

    return pa.schema([(column, arrow_type(column)) for column in columns])


class LabelsFile:
    """A Parquet file written a batch at a time and put in place when whole; with ``path`` None, nothing."""

    def __init__(self, path: str | Path | None) -> None:
        self.path, self.writer = path, None

    def __enter__(self) -> "LabelsFile":
        self.replacing = replace_when_done(self.path) if self.path is not None else nullcontext()
        self.partial = self.replacing.__enter__()
        return self

    def write(self, batch: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.partial is None or not len(batch):
            return
        schema = label_schema(batch.columns)
        # Ray Data hands string columns over as object, str or string[pyarrow] by the block; the first batch's
        # dtype is what a reader gets back (pandas metadata), so every batch goes as object: None stays None
        batch = batch.astype({f.name: object for f in schema if pa.types.is_string(f.type)})
        table = pa.Table.from_pandas(batch, schema=schema, preserve_index=False)
        self.writer = self.writer or pq.ParquetWriter(self.partial, table.schema)
        self.writer.write_table(table)

    def __exit__(self, *failure) -> bool | None:
        if self.writer is not None:
            self.writer.close()
        elif self.partial is not None and failure[0] is None:
            pd.DataFrame(columns=["id", "label", "confidence"]).to_parquet(self.partial, index=False)
        return self.replacing.__exit__(*failure)
