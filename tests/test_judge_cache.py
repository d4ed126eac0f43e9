"""The verdict cache: parts written whole, answers served, transient failures asked again, keys that see every input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rlthf.judges.base import VERDICT_COLUMNS
from rlthf.judges.cache import RECORD_COLUMNS, VerdictCache, cache_key, is_servable

PARAMS = {"mode": "generate", "temperature": 0.0, "max_new_tokens": 64}


def verdict(pair_id: str, order: str = "ab", *, preference: str = "A", error: str = "",
            retryable: bool | None = False) -> dict:
    """A cache record as the labeling step writes one; ``retryable=None`` leaves the field out."""
    record = {"key": f"{pair_id}|{order}", "pair_id": pair_id, "order": order, "preference": preference,
              "raw": f'preference: "Response {preference}"' if preference else "garbled", "logprob_a": math.nan,
              "logprob_b": math.nan, "prompt_tokens": 812, "completion_tokens": 9, "error": error,
              "cache_key": cache_key(pair_id, order, "gpt-4o", "0123456789abcdef", PARAMS), "model": "gpt-4o",
              "template_hash": "0123456789abcdef", "time": "2025-01-01T00:00:00+00:00"}
    if retryable is not None:
        record["retryable"] = retryable
    return record


def same(a: dict, b: dict) -> bool:
    """Record equality where NaN equals NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_add_get_and_persist(tmp_path):
    root = tmp_path / "judge" / "verdicts"
    cache = VerdictCache(root)
    assert len(cache) == 0 and cache.parts() == [] and cache.dataset() is None
    one, two = verdict("p1"), verdict("p2", "ba", preference="B")
    cache.add([one, two])
    assert len(cache) == 2 and len(cache.parts()) == 1  # one part a batch
    assert one["cache_key"] in cache and two["cache_key"] in cache
    assert same(cache.get(one["cache_key"]), one) and cache.get(two["cache_key"])["preference"] == "B"
    assert cache.get("no such key") is None and "no such key" not in cache and 3 not in cache

    reopened = VerdictCache(root)
    assert len(reopened) == 2
    assert same(reopened.get(one["cache_key"]), one) and same(reopened.get(two["cache_key"]), two)
    assert set(VERDICT_COLUMNS) <= set(reopened.get(one["cache_key"]))
    assert not list(root.glob(".*"))  # no temporary file left beside the parts


def test_numpy_values_and_time_filled(tmp_path):
    record = verdict("p1")
    del record["time"]
    record.update(prompt_tokens=np.int64(5), logprob_a=np.float64(-0.25), retryable=np.bool_(False))
    cache = VerdictCache(tmp_path / "v")
    cache.add([record])
    kept = cache.get(record["cache_key"])
    assert type(kept["prompt_tokens"]) is int and kept["logprob_a"] == -0.25 and kept["retryable"] is False
    assert kept["time"].endswith("+00:00")


def test_an_answer_is_served_and_a_later_failure_never_hides_it(tmp_path):
    root = tmp_path / "v"
    failed = verdict("p1", preference="", error="HTTP 503", retryable=True)
    answered = verdict("p1", preference="B")
    VerdictCache(root).add([failed])
    assert failed["cache_key"] not in VerdictCache(root)
    VerdictCache(root).add([answered])
    cache = VerdictCache(root)
    assert len(cache.parts()) == 2
    assert len(cache) == 1 and cache.get(answered["cache_key"])["preference"] == "B"
    cache.add([failed])  # a failure recorded after the answer: the answer was paid for, and stays served
    assert cache.get(answered["cache_key"])["preference"] == "B"
    # two answers to one request (two runs asked at once): the newest is served
    cache.add([{**answered, "preference": "A", "time": "2025-01-02T00:00:00+00:00"}])
    assert len(cache) == 1 and cache.get(answered["cache_key"])["preference"] == "A"


def test_transient_failures_asked_again_parse_failures_served(tmp_path):
    root = tmp_path / "v"
    transient = verdict("p1", preference="", error="timeout after 60 s", retryable=True)
    unparsed = verdict("p2", preference="", error="no preference in the answer", retryable=False)
    cache = VerdictCache(root)
    cache.add([transient, unparsed])
    for reader in (cache, VerdictCache(root)):
        assert reader.get(transient["cache_key"]) is None and transient["cache_key"] not in reader
        assert reader.get(unparsed["cache_key"])["error"] == "no preference in the answer"
        assert len(reader) == 1


def test_error_needs_retryable_and_key(tmp_path):
    root = tmp_path / "v"
    cache = VerdictCache(root)
    with pytest.raises(ValueError, match="retryable"):
        cache.add([verdict("p1"), verdict("p2", preference="", error="HTTP 500", retryable=None)])
    with pytest.raises(ValueError, match="cache_key"):
        cache.add([{**verdict("p3"), "cache_key": ""}])
    assert cache.parts() == [] and len(cache) == 0  # nothing of a bad batch is written


def test_is_servable():
    assert is_servable({"error": ""})
    assert is_servable({"error": "unparsed", "retryable": False})
    assert not is_servable({"error": "HTTP 429", "retryable": True})
    assert not is_servable({"error": "written by other code"})  # when in doubt, ask again


def test_an_earlier_versions_jsonl_cache_is_read_once_into_a_part(tmp_path):
    one, two, three = verdict("p1"), verdict("p2", "ba", preference="B"), verdict("p3")
    failed = verdict("p4", preference="", error="HTTP 503", retryable=True)
    legacy = tmp_path / "judge" / "verdicts.jsonl"
    legacy.parent.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in (one, two, failed, three))
    legacy.write_text(text[: len(text) - 40])  # a crash in the middle of the last append
    for path in (legacy, tmp_path / "judge" / "verdicts"):  # the old file's name, or the folder beside it
        cache = VerdictCache(path)
        assert cache.root == str(tmp_path / "judge" / "verdicts") and [p.rsplit("/", 1)[1] for p in cache.parts()] == [
            "part-jsonl.parquet"]
        assert len(cache) == 2 and same(cache.get(one["cache_key"]), one) and same(cache.get(two["cache_key"]), two)
        assert failed["cache_key"] not in cache and three["cache_key"] not in cache
    assert legacy.read_text() == text[: len(text) - 40]  # left in place


def test_the_dataset_serves_what_get_serves(ray_local, tmp_path):
    cache = VerdictCache(tmp_path / "v")
    cache.add([verdict("p1"), verdict("p2", preference="", error="HTTP 429", retryable=True)])
    cache.add([verdict("p3", preference="", error="garbled", retryable=False)])
    served = cache.dataset().to_pandas()
    assert sorted(served["pair_id"]) == ["p1", "p3"] and list(served.columns) == list(RECORD_COLUMNS)


def test_key_sees_every_component():
    args = ("p1", "ab", "gpt-4o", "0123456789abcdef", PARAMS)
    reference = cache_key(*args)
    assert len(reference) == 64 and int(reference, 16) >= 0
    assert cache_key(*args) == reference
    assert cache_key("p1", "ab", "gpt-4o", "0123456789abcdef", dict(reversed(PARAMS.items()))) == reference
    variants = [
        ("p2", "ab", "gpt-4o", "0123456789abcdef", PARAMS),
        ("p1", "ba", "gpt-4o", "0123456789abcdef", PARAMS),
        ("p1", "ab", "gpt-4o-mini", "0123456789abcdef", PARAMS),
        ("p1", "ab", "gpt-4o", "fedcba9876543210", PARAMS),
        ("p1", "ab", "gpt-4o", "0123456789abcdef", {**PARAMS, "mode": "logprob"}),
        ("p1", "ab", "gpt-4o", "0123456789abcdef", {**PARAMS, "temperature": 0.7}),
        ("p1", "ab", "gpt-4o", "0123456789abcdef", {**PARAMS, "max_new_tokens": 128}),
        ("p1", "ab", "gpt-4o", "0123456789abcdef", {**PARAMS, "seed": 1}),
        ("p1", "ab", "gpt-4o", "0123456789abcdef", {}),
        # no ambiguity from joining: the parts are kept apart
        ("p1|ab", "", "gpt-4o", "0123456789abcdef", PARAMS),
    ]
    keys = [cache_key(*variant) for variant in variants]
    assert len({reference, *keys}) == len(variants) + 1
