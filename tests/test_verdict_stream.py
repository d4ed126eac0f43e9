"""Labeling through the verdict cache on Ray Data: the pairs are joined on the cache's Parquet parts, only what
it does not serve is asked, transient failures are asked again on the next run, and each pair gets one label."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from rlthf.config import JudgeConfig
from rlthf.data import read_pairs
from rlthf.judges.cache import VerdictCache
from rlthf.judges.labeling import label_pairs, verdict_keys
from rlthf.judges.prompts import render_requests, template_hash
from tests.conftest import TEST_API_KEY_ENV
from tests.judge_servers import ANSWER_B, ERROR_503, MODEL_ALIAS, FaultProxy


def judge_config(base_url: str) -> JudgeConfig:
    return JudgeConfig(backend="openai", model=MODEL_ALIAS, base_url=base_url, api_key_env=TEST_API_KEY_ENV,
                       both_orders=True, max_new_tokens=24, temperature=0.0, max_prompt_chars=500, max_retries=0,
                       timeout_s=120, concurrency=2, batch_size=4, mode="generate")


def record(config: JudgeConfig, pair_id: str, order: str, preference: str, time: str, **fields) -> dict:
    """A cache record of ``config``'s request about ``pair_id`` in ``order``, as the labeling writes one."""
    template = template_hash(config)
    return {"cache_key": verdict_keys([pair_id], order, config, template)[0], "key": f"{pair_id}|{order}",
            "pair_id": pair_id, "order": order, "preference": preference, "raw": f"said {preference}",
            "logprob_a": math.nan, "logprob_b": math.nan, "prompt_tokens": 100, "completion_tokens": 5,
            "error": "", "retryable": False, "model": config.model, "template_hash": template, "time": time, **fields}


def test_a_cache_that_serves_every_request_labels_each_pair_once_without_asking(ray_local, tmp_path):
    ray = ray_local
    config = judge_config("http://127.0.0.1:9/v1")  # nothing listens there: asking would fail every request
    pairs = pd.DataFrame({"id": ["p0", "p1", "p2", "p3"], "prompt": ["q"] * 4, "response_a": ["x"] * 4,
                          "response_b": ["y"] * 4, "human_label": ["a", "b", "a", None]})
    t0, t1 = "2025-01-01T00:00:00+00:00", "2025-01-02T00:00:00+00:00"
    cache = VerdictCache(tmp_path / "verdicts")
    cache.add([record(config, "p0", "ab", "A", t0), record(config, "p0", "ba", "B", t0),     # a, consistent
               record(config, "p1", "ab", "A", t0), record(config, "p1", "ba", "A", t0),     # inconsistent
               record(config, "p2", "ab", "B", t0),
               record(config, "p2", "ba", "", t0, error="unparseable answer"),               # single: b
               record(config, "p3", "ab", "A", t0), record(config, "p3", "ba", "B", t0)])
    # another run sharing the cache asked about p3 at the same time: two answers to one request
    cache.add([record(config, "p3", "ab", "A", t1),
               # and a model this run does not use answered about p0
               {**record(config, "p0", "ab", "B", t1), "cache_key": "f" * 64, "model": "other"}])

    labels, report = label_pairs(ray.data.from_pandas(pairs), config, cache.root, pair_count=4,
                                 labels_path=tmp_path / "labels.parquet")
    written = pd.read_parquet(tmp_path / "labels.parquet").set_index("id").sort_index()
    assert sorted(labels["id"]) == ["p0", "p1", "p2", "p3"]  # each pair once
    assert written["label"].fillna("none").tolist() == ["a", "none", "b", "a"]
    assert written["confidence"].tolist() == ["consistent", "inconsistent", "single", "consistent"]
    assert written["raw_ab"].tolist() == ["said A", "said A", "said B", "said A"]
    assert written.loc["p2", "error_ba"] == "unparseable answer" and not written["retryable_ab"].any()
    assert labels.set_index("id").sort_index()["label"].fillna("none").tolist() == ["a", "none", "b", "a"]
    assert report["asked"] == 0 and report["from_cache"] == report["requests"] == 8
    assert report["parse_failures"] == 1 and report["position_consistency"] == pytest.approx(2 / 3)
    # against human_label: p0 right, p2 wrong; p1 has no label, p3 no human label
    assert report["accuracy"] == pytest.approx(1 / 2) and report["accuracy_pairs"] == 2


@pytest.mark.slow
def test_only_what_the_cache_lacks_is_asked_and_a_transient_failure_is_asked_again(ray_local, llama_server,
                                                                                    hh_rlhf_path, tmp_path):
    ray = ray_local
    pairs, _ = read_pairs(hh_rlhf_path, max_pairs=5)
    pairs = pairs[["id", "prompt", "response_a", "response_b"]]
    users = render_requests(pairs, judge_config("http://unused"))["user"]
    # the first pair's (a, b) request: 503 every time; the second pair's (b, a): a well-formed "B"
    schedule = {users[0]: ERROR_503, users[3]: [ANSWER_B]}
    cache_root = tmp_path / "verdicts"
    with FaultProxy(llama_server, schedule) as proxy:
        first, report = label_pairs(ray.data.from_pandas(pairs), judge_config(proxy.base_url), cache_root,
                                    pair_count=5, labels_path=tmp_path / "first.parquet")
    assert report["asked"] == 10 and report["from_cache"] == 0 and report["errors"] == 1
    first_rows = pd.read_parquet(tmp_path / "first.parquet").set_index("id")
    failed = first_rows.loc[pairs["id"][0]]
    assert failed["retryable_ab"] and failed["error_ab"].endswith(": 503") and failed["confidence"] != "consistent"
    assert first_rows.loc[pairs["id"][1], "preference_ba"] == "B"
    assert len(VerdictCache(cache_root)) == 9  # the failure is recorded, not served

    # A second run (the proxy gone) asks only for the failed verdict; the others come from the cache.
    second, report = label_pairs(ray.data.from_pandas(pairs), judge_config(llama_server), cache_root, pair_count=5,
                                 labels_path=tmp_path / "second.parquet")
    assert report["asked"] == 1 and report["from_cache"] == 9 and report["errors"] == 0
    second_rows = pd.read_parquet(tmp_path / "second.parquet").set_index("id")
    assert not second_rows.loc[pairs["id"][0], "retryable_ab"] and second_rows.loc[pairs["id"][0], "raw_ab"]
    others = pairs["id"][1:]
    columns = ["label", "confidence", "raw_ab", "raw_ba"]
    assert second_rows.loc[others, columns].equals(first_rows.loc[others, columns])
    assert len(VerdictCache(cache_root)) == 10
