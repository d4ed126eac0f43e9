"""Initial alignment (paper section 3.1): an LLM judge labels every pair, batched on Ray Data.

Every verdict is keyed by (pair id, order, model, prompt-template hash, judge parameters) and appended to a
JSON-lines cache the moment it comes back, so a rerun or a resumed run never pays twice for a verdict and a
crash mid-labeling loses none that had arrived. Transient failures (rate limits, 5xx, timeouts) are recorded
but asked again on the next run.

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
from importlib import import_module
from pathlib import Path

import numpy as np
import pandas as pd

from rlthf.cluster.actors import map_on_actor_pool
from rlthf.config import JudgeConfig
from rlthf.judges.base import REQUEST_COLUMNS, VERDICT_COLUMNS, cost

log = logging.getLogger("rlthf")

BACKENDS = {
    "transformers": "rlthf.judges.transformers_backend:TransformersJudge",
    "openai": "rlthf.judges.openai_backend:OpenAIJudge",
}
VOTE = {"ab": {"A": "a", "B": "b"}, "ba": {"A": "b", "B": "a"}}


def backend_class(name: str):
    if name not in BACKENDS:
        raise ValueError(f"judge.backend {name!r} has no Ray Data callable class; one of {sorted(BACKENDS)}")
    module, attr = BACKENDS[name].split(":")
    return getattr(import_module(module), attr)


def judge_params(config: JudgeConfig) -> dict:
    """What changes a verdict besides the pair, the model and the prompt text: part of the cache key."""
    return {"backend": config.backend, "mode": config.mode, "temperature": config.temperature,
            "max_new_tokens": config.max_new_tokens, "gguf_file": config.gguf_file}


def run_judge(requests: pd.DataFrame, config: JudgeConfig):
    """Verdict batches for ``requests`` from the configured backend on Ray Data (an iterator of dicts)."""
    import ray

    chunk = max(config.batch_size * 8, 64)  # several blocks, so verdicts stream back (and into the cache)
    ds = ray.data.from_pandas([requests.iloc[i:i + chunk] for i in range(0, len(requests), chunk)])
    if config.backend == "vllm":
        from rlthf.judges.vllm_backend import vllm_verdicts

        ds = vllm_verdicts(ds, config)
    else:
        ds = map_on_actor_pool(ds, backend_class(config.backend), {"config": config}, config)
    return ds.iter_batches(batch_size=None, batch_format="numpy")


def label_pairs(pairs: pd.DataFrame, config: JudgeConfig, cache_path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Judge every pair (id, prompt, response_a, response_b[, human_label]); returns per-pair labels and a report.

    The labels frame has ``id, label, confidence, preference_ab, preference_ba, raw_ab, raw_ba,
    logprob_margin, error_ab, error_ba``; ``label`` is "a", "b" or None.
    """
    from tqdm.auto import tqdm

    from rlthf.judges.cache import VerdictCache, cache_key
    from rlthf.judges.prompts import render_requests, template_hash

    started = time.perf_counter()
    requests = pd.DataFrame(render_requests(pairs, config))[list(REQUEST_COLUMNS)]
    template, params = template_hash(config), judge_params(config)
    keys = [cache_key(p, o, config.model, template, params) for p, o in zip(requests["pair_id"], requests["order"])]
    cache = VerdictCache(cache_path)
    fresh: dict[str, dict] = {}
    missing = [i for i, k in enumerate(keys) if cache.get(k) is None]
    if missing:
        log.info("judging %d requests with %s (%s); %d from the cache", len(missing), config.model,
                 config.backend, len(keys) - len(missing))
        key_of = dict(zip(requests["key"], keys))
        with tqdm(total=len(missing), desc="judge", unit="verdict") as bar:
            for batch in run_judge(requests.iloc[missing].reset_index(drop=True), config):
                records = []
                for i in range(len(batch["key"])):
                    record = {c: batch[c][i] for c in VERDICT_COLUMNS}  # the cache stores plain values
                    record.update(cache_key=key_of[record["key"]], model=config.model, template_hash=template)
                    records.append(record)
                    fresh[record["cache_key"]] = record
                cache.add(records)
                bar.update(len(records))
    verdicts = pd.DataFrame([fresh.get(k) or cache.get(k) for k in keys])
    if len(verdicts) != len(requests) or verdicts["key"].tolist() != requests["key"].tolist():
        raise RuntimeError("the judge lost or reordered verdicts")  # every request must end with one verdict
    labels = aggregate_verdicts(pairs["id"].tolist(), verdicts)
    report = judge_report(pairs, labels, verdicts, config, asked=len(missing),
                          seconds=time.perf_counter() - started)
    return labels, report


def aggregate_verdicts(pair_ids: list[str], verdicts: pd.DataFrame) -> pd.DataFrame:
    """One label per pair from its verdicts in one or both orders (rules in the module docstring)."""
    by_key = verdicts.set_index("key")
    rows = []
    for pid in pair_ids:
        row = {"id": pid}
        votes, margin = {}, 0.0
        has_logprobs = True
        for order in ("ab", "ba"):
            key = f"{pid}|{order}"
            v = by_key.loc[key] if key in by_key.index else None
            row[f"preference_{order}"] = v["preference"] if v is not None else ""
            row[f"raw_{order}"] = v["raw"] if v is not None else ""
            row[f"error_{order}"] = v["error"] if v is not None else "not asked"
            if v is None:
                continue
            vote = VOTE[order].get(v["preference"])
            if vote:
                votes[order] = vote
            lp = v["logprob_a"] - v["logprob_b"]
            if np.isfinite(lp):
                margin += lp if order == "ab" else -lp
            else:
                has_logprobs = False
        row["logprob_margin"] = margin if has_logprobs and votes else np.nan
        if len(votes) == 2 and votes["ab"] == votes["ba"]:
            row["label"], row["confidence"] = votes["ab"], "consistent"
        elif len(votes) == 2:
            row["confidence"] = "inconsistent"
            row["label"] = ("a" if margin > 0 else "b" if margin < 0 else None) if has_logprobs else None
        elif len(votes) == 1:
            row["label"], row["confidence"] = next(iter(votes.values())), "single"
        else:
            row["label"], row["confidence"] = None, "failed"
        rows.append(row)
    labels = pd.DataFrame(rows)
    labels["label"] = labels["label"].astype(object).where(labels["label"].notna(), None)
    return labels


def judge_report(pairs: pd.DataFrame, labels: pd.DataFrame, verdicts: pd.DataFrame, config: JudgeConfig, *,
                 asked: int, seconds: float) -> dict:
    """Parse failures, position consistency, tokens, cost, and accuracy against ``human_label`` where known."""
    confidence = labels["confidence"].value_counts().to_dict()
    both = confidence.get("consistent", 0) + confidence.get("inconsistent", 0)
    report = {
        "model": config.model, "backend": config.backend, "mode": config.mode, "pairs": len(labels),
        "requests": len(verdicts), "asked": asked, "from_cache": len(verdicts) - asked,
        "parse_failures": int(verdicts["error"].isin(["unparseable answer", "truncated answer"]).sum()),
        "errors": int(((verdicts["error"] != "") & verdicts["retryable"].astype(bool)).sum()),
        "confidence": {k: int(v) for k, v in confidence.items()},
        "position_consistency": confidence.get("consistent", 0) / both if both else None,
        "labelled": int(labels["label"].notna().sum()),
        "prompt_tokens": int(verdicts["prompt_tokens"].sum()),
        "completion_tokens": int(verdicts["completion_tokens"].sum()),
        "seconds": round(seconds, 2),
    }
    report["cost"] = cost(report["prompt_tokens"], report["completion_tokens"], config)
    if "human_label" in pairs and pairs["human_label"].notna().any():
        truth = pairs.set_index("id")["human_label"].reindex(labels["id"]).to_numpy()
        known = labels["label"].notna().to_numpy() & pd.notna(truth)
        report["accuracy"] = float(np.mean(labels["label"].to_numpy()[known] == truth[known])) if known.any() else None
        report["accuracy_pairs"] = int(known.sum())
    return report
