"""Loading preference pairs: the real HH-RLHF file, every kind of bad record, the pairs format, splits."""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import pickle
import sys

import numpy as np
import pandas as pd
import pytest

from rlthf.data import (PAIR_COLUMNS, InvalidRecord, choose_shard, hash_unit, load_pairs, pair_id, read_pairs,
                        split_test)
from rlthf.rundir import read_jsonl

# What the real file holds that cannot be a pair: four empty chosen responses, five rejected transcripts whose
# dialogue before the last assistant turn differs from the chosen one's.
HH_REJECTED = [(87, "chosen"), (517, "chosen"), (926, "chosen"), (1104, "chosen"), (1255, "rejected"),
               (1689, "rejected"), (1951, "rejected"), (1953, "rejected"), (2037, "rejected")]
HH_VALID = 2312 - len(HH_REJECTED)


@pytest.fixture(scope="module")
def hh_pairs(hh_rlhf_path):
    return read_pairs(hh_rlhf_path, seed=0)


def transcript(*turns: str) -> str:
    """An HH-style transcript from alternating human and assistant turns."""
    speakers = ["Human", "Assistant"]
    return "".join(f"\n\n{speakers[i % 2]}: {text}" for i, text in enumerate(turns))


def write_lines(path, lines: list) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


GOOD_HH = {"chosen": transcript("Hi", "Hello there."), "rejected": transcript("Hi", "Go away.")}


# The real file

def test_real_file_valid_pairs_and_rejections(hh_pairs):
    pairs, rejected = hh_pairs
    assert len(pairs) == HH_VALID == 2303
    assert tuple(pairs.columns) == PAIR_COLUMNS
    assert [(r.line, r.field) for r in rejected] == HH_REJECTED
    assert {r.source for r in rejected} == {"test.jsonl.gz"}
    assert {r.reason for r in rejected if r.field == "chosen"} == {"empty response"}
    assert {r.reason for r in rejected if r.field == "rejected"} == {
        "the dialogue before the last assistant turn differs from chosen's"}
    assert pairs["label"].isna().all() and pairs["label_source"].isna().all()
    assert pairs["label"].tolist() == [None] * len(pairs)  # None, not NaN
    assert set(pairs["human_label"]) == {"a", "b"}


def test_real_file_ids_unique_stable_and_seed_independent(hh_rlhf_path, hh_pairs):
    pairs, _ = hh_pairs
    assert pairs["id"].is_unique
    assert pairs["id"].str.fullmatch(r"[0-9a-f]{16}").all()
    again, _ = read_pairs(hh_rlhf_path, seed=0)
    other_seed, _ = read_pairs(hh_rlhf_path, seed=1)
    pd.testing.assert_frame_equal(again, pairs)
    assert other_seed["id"].tolist() == pairs["id"].tolist()


def test_real_file_ab_order_balanced_and_seeded(hh_rlhf_path, hh_pairs):
    pairs, _ = hh_pairs
    other_seed, _ = read_pairs(hh_rlhf_path, seed=1)
    for frame in (pairs, other_seed):
        assert 0.45 <= (frame["human_label"] == "a").mean() <= 0.55
    changed = (pairs["human_label"] != other_seed["human_label"]).mean()
    assert 0.4 <= changed <= 0.6  # two independent coin flips per pair
    # The flip is the documented one: a = chosen exactly when the pair's hash is below one half.
    expected = np.where(hash_unit(0, "ab", pairs["id"]) < 0.5, "a", "b")
    assert pairs["human_label"].tolist() == expected.tolist()


def test_real_file_transcripts_reconstruct(hh_rlhf_path, hh_pairs):
    pairs, _ = hh_pairs
    with gzip.open(hh_rlhf_path, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for number, line in enumerate(fh, 1)
                   if number not in {n for n, _ in HH_REJECTED}]
    assert len(records) == len(pairs)
    for record, pair in zip(records, pairs.itertuples()):
        chosen, rejected = ((pair.response_a, pair.response_b) if pair.human_label == "a"
                            else (pair.response_b, pair.response_a))
        assert pair.prompt.endswith("\n\nAssistant:")
        assert pair.prompt + chosen == record["chosen"]
        assert pair.prompt + rejected == record["rejected"]
        assert pair.id == pair_id(pair.prompt, chosen, rejected)


def test_real_file_on_invalid_error_names_line_and_field(hh_rlhf_path):
    with pytest.raises(InvalidRecord, match=r"^test\.jsonl\.gz:87: field 'chosen': empty response$") as info:
        read_pairs(hh_rlhf_path, on_invalid="error")
    assert (info.value.line, info.value.field) == (87, "chosen")


def test_max_pairs_stops_after_n_valid(hh_rlhf_path, hh_pairs):
    first, rejected = read_pairs(hh_rlhf_path, max_pairs=100)
    assert first["id"].tolist() == hh_pairs[0]["id"].head(100).tolist()
    assert [r.line for r in rejected] == [87]  # the 100th valid pair is line 101; nothing after it is read


# Bad records, one per file, each at a known line

HH_BAD = [
    ("not json", "{not json", "json"),
    ("not an object", ["chosen", "rejected"], "json"),
    ("chosen missing", {"rejected": GOOD_HH["rejected"]}, "chosen"),
    ("rejected missing", {"chosen": GOOD_HH["chosen"]}, "rejected"),
    ("chosen not a string", {"chosen": 3, "rejected": GOOD_HH["rejected"]}, "chosen"),
    ("no assistant turn", {"chosen": "\n\nHuman: Hi", "rejected": GOOD_HH["rejected"]}, "chosen"),
    ("prefix mismatch", {"chosen": transcript("Hi", "Hello."), "rejected": transcript("Hey", "Hello.")},
     "rejected"),
    ("empty chosen", {"chosen": transcript("Hi", ""), "rejected": transcript("Hi", "Go away.")}, "chosen"),
    ("blank rejected", {"chosen": transcript("Hi", "Hello."), "rejected": transcript("Hi", "") + "  \n"},
     "rejected"),
    ("identical", {"chosen": transcript("Hi", "Hello."), "rejected": transcript("Hi", "Hello.")}, "rejected"),
    ("duplicate", GOOD_HH, "id"),
    ("duplicate swapped", {"chosen": GOOD_HH["rejected"], "rejected": GOOD_HH["chosen"]}, "id"),
]


@pytest.mark.parametrize("bad, field", [case[1:] for case in HH_BAD], ids=[case[0] for case in HH_BAD])
def test_hh_rejections(tmp_path, bad, field):
    path = tmp_path / "hh.jsonl"
    write_lines(path, [GOOD_HH, "", bad, {"chosen": transcript("Yo", "Hey."), "rejected": transcript("Yo", "No.")}])
    pairs, rejected = read_pairs(path)
    assert len(pairs) == 2
    assert [(r.source, r.line, r.field) for r in rejected] == [("hh.jsonl", 3, field)]  # blank lines count
    if field == "id":
        assert rejected[0].reason == "duplicate of line 1"
    with pytest.raises(InvalidRecord, match=rf"^hh\.jsonl:3: field '{field}': "):
        read_pairs(path, on_invalid="error")


PAIRS_GOOD = {"prompt": "Say hi.", "response_a": "Hi!", "response_b": "No.", "label": "a"}
PAIRS_BAD = [
    ("prompt missing", {"response_a": "x", "response_b": "y"}, "prompt"),
    ("prompt empty", {"prompt": "  ", "response_a": "x", "response_b": "y"}, "prompt"),
    ("response_b missing", {"prompt": "p", "response_a": "x"}, "response_b"),
    ("response_a null", {"prompt": "p", "response_a": None, "response_b": "y"}, "response_a"),
    ("rejected missing", {"prompt": "p", "chosen": "x"}, "rejected"),
    ("chosen not a string", {"prompt": "p", "chosen": ["x"], "rejected": "y"}, "chosen"),
    ("empty response", {"prompt": "p", "response_a": "", "response_b": "y"}, "response_a"),
    ("identical", {"prompt": "p", "chosen": "x", "rejected": "x"}, "rejected"),
    ("bad label", {"prompt": "p", "response_a": "x", "response_b": "y", "label": "A"}, "label"),
    ("duplicate swapped", {"prompt": "Say hi.", "response_a": "No.", "response_b": "Hi!", "label": "b"}, "id"),
    ("duplicate as chosen/rejected", {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}, "id"),
]


@pytest.mark.parametrize("bad, field", [case[1:] for case in PAIRS_BAD], ids=[case[0] for case in PAIRS_BAD])
def test_pairs_rejections(tmp_path, bad, field):
    path = tmp_path / "pairs.jsonl"
    write_lines(path, [PAIRS_GOOD, bad])
    pairs, rejected = read_pairs(path)
    assert len(pairs) == 1
    assert [(r.line, r.field) for r in rejected] == [(2, field)]
    assert InvalidRecord(**rejected[0].to_dict()).to_dict() == rejected[0].to_dict()


def test_invalid_record_message_and_pickle():
    error = InvalidRecord("data.jsonl", 7, "label", "expected 'a', 'b' or null, got 'c'")
    assert str(error) == "data.jsonl:7: field 'label': expected 'a', 'b' or null, got 'c'"
    assert error.to_dict() == {"source": "data.jsonl", "line": 7, "field": "label",
                               "reason": "expected 'a', 'b' or null, got 'c'"}
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ValueError) and str(copy) == str(error)


# The pairs format

PAIRS_ROWS = [
    {"prompt": "p1", "response_a": "x1", "response_b": "y1", "label": "b"},
    {"prompt": "p2", "response_a": "x2", "response_b": "y2", "label": None},
    {"prompt": "p3", "response_a": "x3", "response_b": "y3"},
]
CHOSEN_ROWS = [{"prompt": f"q{i}", "chosen": f"good{i}", "rejected": f"bad{i}"} for i in range(40)]


def _check_ab_pairs(pairs):
    assert tuple(pairs.columns) == PAIR_COLUMNS
    assert pairs["response_a"].tolist() == ["x1", "x2", "x3"]  # a/b order as given
    assert pairs["human_label"].tolist() == ["b", None, None]
    assert pairs["id"].tolist() == [pair_id(f"p{i}", f"x{i}", f"y{i}") for i in (1, 2, 3)]


def _check_chosen_pairs(pairs, seed):
    chosen = np.where(pairs["human_label"] == "a", pairs["response_a"], pairs["response_b"])
    assert chosen.tolist() == [f"good{i}" for i in range(40)]
    assert pairs["id"].tolist() == [pair_id(f"q{i}", f"good{i}", f"bad{i}") for i in range(40)]
    assert pairs["human_label"].tolist() == np.where(hash_unit(seed, "ab", pairs["id"]) < 0.5, "a", "b").tolist()
    assert 5 < (pairs["human_label"] == "a").sum() < 35


def test_pairs_jsonl_both_styles(tmp_path):
    write_lines(tmp_path / "ab.jsonl", PAIRS_ROWS)
    write_lines(tmp_path / "cr.jsonl", CHOSEN_ROWS)
    ab, rejected_ab = read_pairs(tmp_path / "ab.jsonl")
    cr, rejected_cr = read_pairs(tmp_path / "cr.jsonl", seed=3)
    assert rejected_ab == [] and rejected_cr == []
    _check_ab_pairs(ab)
    _check_chosen_pairs(cr, seed=3)


def test_pairs_parquet_both_styles(tmp_path):
    pd.DataFrame(PAIRS_ROWS).to_parquet(tmp_path / "ab.parquet")
    pd.DataFrame(CHOSEN_ROWS).to_parquet(tmp_path / "cr.parquet")
    _check_ab_pairs(read_pairs(tmp_path / "ab.parquet")[0])
    _check_chosen_pairs(read_pairs(tmp_path / "cr.parquet", seed=5)[0], seed=5)


def test_parquet_rejections_use_row_numbers(tmp_path):
    rows = PAIRS_ROWS + [{"prompt": "p4", "response_a": "x4", "response_b": None, "label": "a"},
                         {"prompt": "p5", "response_a": "x5", "response_b": "y5", "label": "c"}]
    pd.DataFrame(rows).to_parquet(tmp_path / "bad.parquet")
    pairs, rejected = read_pairs(tmp_path / "bad.parquet")
    assert len(pairs) == 3
    assert [str(r) for r in rejected] == ["bad.parquet:4: field 'response_b': missing or null",
                                          "bad.parquet:5: field 'label': expected 'a', 'b' or null, got 'c'"]


def test_format_detection_and_explicit_format(tmp_path):
    # A file whose first line is not JSON is still detected from its first valid object.
    write_lines(tmp_path / "hh.jsonl", ["oops", GOOD_HH])
    pairs, rejected = read_pairs(tmp_path / "hh.jsonl")
    assert len(pairs) == 1 and [(r.line, r.field) for r in rejected] == [(1, "json")]
    # The same transcripts read as generic pairs lack a prompt.
    _, rejected = read_pairs(tmp_path / "hh.jsonl", format="pairs")
    assert [(r.line, r.field) for r in rejected] == [(1, "json"), (2, "prompt")]
    with pytest.raises(ValueError, match="format must be one of"):
        read_pairs(tmp_path / "hh.jsonl", format="csv")
    with pytest.raises(ValueError, match="on_invalid must be"):
        read_pairs(tmp_path / "hh.jsonl", on_invalid="ignore")


def test_empty_result_keeps_the_schema(tmp_path):
    write_lines(tmp_path / "bad.jsonl", ["nope"])
    pairs, rejected = read_pairs(tmp_path / "bad.jsonl")
    assert tuple(pairs.columns) == PAIR_COLUMNS and len(pairs) == 0 and len(rejected) == 1


def test_hf_reads_a_dataset_folder_like_the_original_file(tmp_path, hh_rlhf_path):
    # A local folder goes through the same datasets.load_dataset call as a hub name, offline.
    folder = tmp_path / "hh"
    folder.mkdir()
    with gzip.open(hh_rlhf_path, "rt") as src:
        (folder / "train.jsonl").write_text("".join(line for _, line in zip(range(30), src)))
    pairs, rejected = read_pairs(folder, format="hf", hf_split="train")
    original, _ = read_pairs(hh_rlhf_path, max_pairs=30)
    assert len(rejected) == 0 and len(pairs) == 30
    assert pairs.equals(original)


def test_hf_without_datasets_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    with pytest.raises(ImportError, match=r"pip install rlthf\[hf\]"):
        read_pairs("Anthropic/hh-rlhf", format="hf")
    with pytest.raises(ImportError, match=r"no such file.*pip install rlthf\[hf\]"):
        read_pairs(tmp_path / "typo.jsonl")  # auto: no such file, so a dataset name


# Hashes, splits and shards

def test_hash_unit_exact_and_order_independent():
    ids = [f"id{i}" for i in range(500)]
    values = hash_unit(7, "salt", ids)
    digest = hashlib.sha256(b"7:salt:id0").digest()
    assert values[0] == (int.from_bytes(digest[:8], "big") >> 11) / 2.0**53
    assert values.dtype == np.float64 and ((values >= 0) & (values < 1)).all()
    assert np.array_equal(hash_unit(7, "salt", ids[::-1]), values[::-1])
    assert not np.array_equal(hash_unit(8, "salt", ids), values)
    assert not np.array_equal(hash_unit(7, "other", ids), values)
    assert hash_unit(0, "x", []).shape == (0,)
    with pytest.raises(TypeError):
        hash_unit(0, "x", "id0")


def test_pair_id_ignores_response_order():
    assert pair_id("p", "x", "y") == pair_id("p", "y", "x")
    assert pair_id("p", "x", "y") != pair_id("p", "x", "z")
    assert pair_id("p", "x", "y") == hashlib.sha256("p\x00x\x00y".encode()).hexdigest()[:16]


def test_split_test_and_choose_shard(hh_pairs):
    ids = hh_pairs[0]["id"].to_numpy()
    test = split_test(ids, 0.2, seed=0)
    assert test.dtype == bool and 0.17 < test.mean() < 0.23
    shard = choose_shard(ids, 0.25, seed=0)
    assert shard.dtype == bool and shard.sum() == round(0.25 * 2303) == 576
    # Decided per id: shuffling the rows moves the decisions with them.
    order = np.random.default_rng(0).permutation(len(ids))
    assert np.array_equal(split_test(ids[order], 0.2, seed=0), test[order])
    assert np.array_equal(choose_shard(ids[order], 0.25, seed=0), shard[order])
    assert not np.array_equal(choose_shard(ids, 0.25, seed=1), shard)
    assert choose_shard(ids[:10], 0.01, seed=0).sum() == 1
    assert choose_shard(ids[:10], 1.0, seed=0).all()


# Into Ray

def test_load_pairs_to_ray_and_rejected_file(ray_local, hh_rlhf_path, tmp_path, caplog):
    rejected_path = tmp_path / "rejected.jsonl"
    with caplog.at_level(logging.WARNING, logger="rlthf"):
        dataset = load_pairs(hh_rlhf_path, rejected_path=rejected_path, seed=0)
    assert isinstance(dataset, ray_local.data.Dataset)
    assert dataset.count() == HH_VALID
    assert dataset.columns() == list(PAIR_COLUMNS)
    assert [str(t) for t in dataset.schema().types] == ["string"] * len(PAIR_COLUMNS)
    first = dataset.take(1)[0]
    assert first["human_label"] in ("a", "b") and first["label"] is None
    assert [(r["line"], r["field"]) for r in read_jsonl(rejected_path)] == HH_REJECTED
    warnings = [r for r in caplog.records if r.name == "rlthf" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 9 invalid records" in warnings[0].getMessage()
