"""The verdict cache: durable, last record wins, transient failures asked again, keys that see every input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rlthf.judges.base import VERDICT_COLUMNS
from rlthf.judges.cache import VerdictCache, cache_key, is_servable

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
    path = tmp_path / "judge" / "verdicts.jsonl"
    cache = VerdictCache(path)
    assert len(cache) == 0 and not path.exists()
    one, two = verdict("p1"), verdict("p2", "ba", preference="B")
    cache.add([one, two])
    assert len(cache) == 2
    assert one["cache_key"] in cache and two["cache_key"] in cache
    assert same(cache.get(one["cache_key"]), one) and cache.get(two["cache_key"])["preference"] == "B"
    assert cache.get("no such key") is None and "no such key" not in cache and 3 not in cache

    reopened = VerdictCache(path)
    assert len(reopened) == 2
    assert same(reopened.get(one["cache_key"]), one) and same(reopened.get(two["cache_key"]), two)
    assert set(VERDICT_COLUMNS) <= set(reopened.get(one["cache_key"]))
    assert len(path.read_text().splitlines()) == 2


def test_numpy_values_and_time_filled(tmp_path):
    record = verdict("p1")
    del record["time"]
    record.update(prompt_tokens=np.int64(5), logprob_a=np.float64(-0.25), retryable=np.bool_(False))
    cache = VerdictCache(tmp_path / "v.jsonl")
    cache.add([record])
    kept = cache.get(record["cache_key"])
    assert type(kept["prompt_tokens"]) is int and kept["logprob_a"] == -0.25 and kept["retryable"] is False
    assert kept["time"].endswith("+00:00")
    assert same(VerdictCache(tmp_path / "v.jsonl").get(record["cache_key"]), kept)


def test_last_record_wins(tmp_path):
    path = tmp_path / "v.jsonl"
    failed = verdict("p1", preference="", error="HTTP 503", retryable=True)
    answered = verdict("p1", preference="B")
    VerdictCache(path).add([failed])
    assert failed["cache_key"] not in VerdictCache(path)
    VerdictCache(path).add([answered])
    cache = VerdictCache(path)
    assert len(path.read_text().splitlines()) == 2
    assert len(cache) == 1 and cache.get(answered["cache_key"])["preference"] == "B"

    # and the other way round: a later transient failure hides an earlier answer (the newest record decides)
    cache.add([failed])
    assert answered["cache_key"] not in cache and answered["cache_key"] not in VerdictCache(path)


def test_transient_failures_asked_again_parse_failures_served(tmp_path):
    path = tmp_path / "v.jsonl"
    transient = verdict("p1", preference="", error="timeout after 60 s", retryable=True)
    unparsed = verdict("p2", preference="", error="no preference in the answer", retryable=False)
    cache = VerdictCache(path)
    cache.add([transient, unparsed])
    for reader in (cache, VerdictCache(path)):
        assert reader.get(transient["cache_key"]) is None and transient["cache_key"] not in reader
        assert reader.get(unparsed["cache_key"])["error"] == "no preference in the answer"
        assert len(reader) == 1


def test_error_needs_retryable_and_key(tmp_path):
    path = tmp_path / "v.jsonl"
    cache = VerdictCache(path)
    with pytest.raises(ValueError, match="retryable"):
        cache.add([verdict("p1"), verdict("p2", preference="", error="HTTP 500", retryable=None)])
    with pytest.raises(ValueError, match="cache_key"):
        cache.add([{**verdict("p3"), "cache_key": ""}])
    assert not path.exists() and len(cache) == 0  # nothing of a bad batch is written


def test_is_servable():
    assert is_servable({"error": ""})
    assert is_servable({"error": "unparsed", "retryable": False})
    assert not is_servable({"error": "HTTP 429", "retryable": True})
    assert not is_servable({"error": "written by other code"})  # when in doubt, ask again


def test_torn_last_line_ignored_and_cut_before_appending(tmp_path):
    path = tmp_path / "v.jsonl"
    one, two, three = verdict("p1"), verdict("p2"), verdict("p3")
    VerdictCache(path).add([one, two])
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # a crash in the middle of the second append
    cache = VerdictCache(path)
    assert path.read_text() == text[: len(text) - 40]  # opening only reads
    assert len(cache) == 1 and one["cache_key"] in cache and two["cache_key"] not in cache
    cache.add([two])  # without the cut, two would be glued onto the torn fragment
    reopened = VerdictCache(path)
    assert len(reopened) == 2 and same(reopened.get(two["cache_key"]), two)
    assert len(path.read_text().splitlines()) == 2

    # a whole record that lost only its newline is kept, and the next one goes on its own line
    path.write_text(path.read_text().rstrip("\n"))
    cache = VerdictCache(path)
    assert len(cache) == 2
    cache.add([three])
    assert len(VerdictCache(path)) == 3 and len(path.read_text().splitlines()) == 3


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
