"""Loading preference pairs: the real HH-RLHF file, every kind of bad record, the pairs format, splits."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlthf.config import ConfigError, load_config
from rlthf.core.labels import PAIR_COLUMNS, combine_orders, hash_unit
from rlthf.data import (InvalidRecord, MissingColumnError, choose_shard, column_ai_labels, load_pairs, pair_id,
                        read_configured_pairs, read_pairs, split_and_shard, split_test)
from rlthf.rundir import read_jsonl


VICUNA_EXTRAS = ("record_id", "question_id", "category", "model_a", "model_b", "human_votes", "judge_label",
                 "judge_label_swapped", "judge")

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


def test_a_duplicate_is_found_however_many_lines_back_its_first_copy_is(tmp_path):
    # 40,000 pairs: the reader's table of ids seen keeps its older ids in sorted arrays (a batch of 16,384 at a
    # time), the newest in a dict; duplicates of lines in both, and of the first and the last line, are caught.
    records = [{"prompt": f"Say {i}.", "response_a": "Hi!", "response_b": "No."} for i in range(40_000)]
    path = tmp_path / "pairs.jsonl"
    write_lines(path, records + [records[0], records[20_000], records[39_999], records[39_998]])
    pairs, rejected = read_pairs(path)
    assert len(pairs) == 40_000 and pairs["id"].is_unique
    assert [(r.line, r.reason) for r in rejected] == [
        (40_001, "duplicate of line 1"), (40_002, "duplicate of line 20001"), (40_003, "duplicate of line 40000"),
        (40_004, "duplicate of line 39999")]


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


# Extra columns of the pairs format

def test_extra_columns_kept_after_the_pair_columns(tmp_path):
    rows = [
        {"id": "r1", "prompt": "p1", "response_a": "x1", "response_b": "y1", "label": "a", "topic": "math",
         "votes": {"a": 2, "b": 1}, "turns": [1, 2], "score": 0.5, "n": 3, "ok": True},
        {"id": "r2", "prompt": "p2", "response_a": "x2", "response_b": "y2", "n": None, "late": "only here"},
    ]
    write_lines(tmp_path / "extra.jsonl", rows)
    pairs, rejected = read_pairs(tmp_path / "extra.jsonl")
    assert rejected == []
    extras = ("record_id", "topic", "votes", "turns", "score", "n", "ok", "late")
    assert tuple(pairs.columns) == PAIR_COLUMNS + extras
    # The record's own id is kept beside rlthf's content hash, which stays the pair id.
    assert pairs["record_id"].tolist() == ["r1", "r2"]
    assert pairs["id"].tolist() == [pair_id("p1", "x1", "y1"), pair_id("p2", "x2", "y2")]
    assert pairs["votes"].tolist() == ['{"a": 2, "b": 1}', None] and pairs["turns"][0] == "[1, 2]"
    assert pairs["topic"].tolist() == ["math", None] and pairs["late"].tolist() == [None, "only here"]
    assert str(pairs["n"].dtype) == "Int64" and pairs["n"][0] == 3 and pairs["n"].isna()[1]
    assert pairs["score"][0] == 0.5 and np.isnan(pairs["score"][1])
    # Every column writes to Parquet and comes back (a null as pandas reads it back: NaN in a text column).
    pairs.to_parquet(tmp_path / "extra.parquet")
    back = pd.read_parquet(tmp_path / "extra.parquet")
    assert tuple(back.columns) == PAIR_COLUMNS + extras
    assert back["votes"][0] == pairs["votes"][0] and back["votes"].isna()[1]
    assert back["n"][0] == 3 and back["ok"][0] == True and back["ok"].isna()[1]  # noqa: E712 (a numpy bool)


def test_extra_fields_never_overwrite_pair_columns(tmp_path):
    row = {"prompt": "p", "response_a": "x", "response_b": "y", "label": "b", "human_label": "a",
           "label_source": "gpt", "id": 7, "record_id": "taken"}
    write_lines(tmp_path / "clash.jsonl", [row])
    pairs, _ = read_pairs(tmp_path / "clash.jsonl")
    first = pairs.iloc[0]
    assert (first["id"], first["human_label"], first["label"], first["label_source"]) == (
        pair_id("p", "x", "y"), "b", None, None)
    assert (first["record_human_label"], first["record_label_source"]) == ("a", "gpt")
    assert (first["record_id"], first["record_record_id"]) == ("taken", 7)


def test_mixed_types_become_text_so_parquet_can_hold_them(tmp_path):
    rows = [{"prompt": f"p{i}", "response_a": "x", "response_b": "y", "mixed": value}
            for i, value in enumerate([3, "three", True, None, 2.5])]
    write_lines(tmp_path / "mixed.jsonl", rows)
    pairs, _ = read_pairs(tmp_path / "mixed.jsonl")
    assert pairs["mixed"].tolist() == ["3", "three", "true", None, "2.5"]
    pairs.to_parquet(tmp_path / "mixed.parquet")


def test_parquet_and_chosen_rejected_records_keep_extras(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"good{i}", "rejected": f"bad{i}", "label": "a", "source": "s"}
            for i in range(3)]
    pd.DataFrame(rows).to_parquet(tmp_path / "cr.parquet")
    pairs, _ = read_pairs(tmp_path / "cr.parquet")
    # chosen, rejected and the label beside them made the pair; the rest is kept.
    assert tuple(pairs.columns) == PAIR_COLUMNS + ("source",)


def test_transcripts_keep_exactly_the_pair_columns(tmp_path):
    write_lines(tmp_path / "hh.jsonl", [dict(GOOD_HH, id="h1", extra=1)])
    pairs, _ = read_pairs(tmp_path / "hh.jsonl", format="hh_rlhf")
    assert tuple(pairs.columns) == PAIR_COLUMNS


# AI labels that come with the data

def ai_row(i, **fields):
    return {"prompt": f"p{i}", "response_a": f"x{i}", "response_b": f"y{i}", **fields}


def test_label_columns_accept_a_b_tie_null_in_any_case(tmp_path):
    values = ["a", "B", "tie", "TIE", None]
    rows = [ai_row(i, verdict=v) for i, v in enumerate(values)] + [ai_row(9)]  # the last has no verdict field
    write_lines(tmp_path / "ai.jsonl", rows)
    pairs, rejected = read_pairs(tmp_path / "ai.jsonl", label_columns=["verdict"])
    assert rejected == []
    assert pairs["verdict"].tolist() == ["a", "b", "tie", "tie", None, None]
    label, consistent = combine_orders(pairs["verdict"])
    assert label.tolist() == ["a", "b", None, None, None, None] and not consistent.any()  # tie/null: unlabelled


@pytest.mark.parametrize("value", ["c", "", " a", "Response A", 1, True, ["a"]], ids=repr)
def test_label_column_bad_value_names_line_and_field(tmp_path, value):
    write_lines(tmp_path / "ai.jsonl", [ai_row(1, verdict="a"), ai_row(2, verdict=value), ai_row(3, verdict="b")])
    message = f"ai.jsonl:2: field 'verdict': expected 'a', 'b', 'tie' or null (in any case), got {value!r}"
    pairs, rejected = read_pairs(tmp_path / "ai.jsonl", label_columns=("verdict",))
    assert pairs["verdict"].tolist() == ["a", "b"]
    assert [str(r) for r in rejected] == [message]
    with pytest.raises(InvalidRecord) as info:
        read_pairs(tmp_path / "ai.jsonl", label_columns=("verdict",), on_invalid="error")
    assert str(info.value) == message


def test_label_column_missing_everywhere_or_a_pair_column(tmp_path):
    write_lines(tmp_path / "ai.jsonl", [ai_row(1, verdict="a")])
    with pytest.raises(MissingColumnError) as info:
        read_pairs(tmp_path / "ai.jsonl", label_columns=("verdict", "verdict_swapped"))
    assert str(info.value) == ("ai.jsonl: no pair has the AI label column 'verdict_swapped'; the pairs have id, "
                               "prompt, response_a, response_b, human_label, label, label_source, verdict")
    with pytest.raises(ValueError, match="'label' is a pair column, not an AI label column"):
        read_pairs(tmp_path / "ai.jsonl", label_columns=("label",))
    with pytest.raises(TypeError, match="not one string"):
        read_pairs(tmp_path / "ai.jsonl", label_columns="verdict")


def test_margin_columns_take_finite_numbers_or_null_and_name_the_bad_record(tmp_path):
    rows = [ai_row(1, verdict="a", lp=1.5), ai_row(2, verdict="b", lp=-3), ai_row(3, verdict="a", lp=None),
            ai_row(4, verdict="b")]  # the last has no margin field
    write_lines(tmp_path / "ai.jsonl", rows)
    pairs, rejected = read_pairs(tmp_path / "ai.jsonl", label_columns=("verdict",), margin_columns=("lp",))
    assert rejected == [] and pairs["lp"].tolist()[:2] == [1.5, -3.0] and pairs["lp"][2:].isna().all()
    for value in ("high", True, float("inf"), [1.0], {"a": 1}):
        write_lines(tmp_path / "bad.jsonl", [ai_row(1, lp=0.5), ai_row(2, lp=value)])
        pairs, rejected = read_pairs(tmp_path / "bad.jsonl", margin_columns=("lp",))
        assert pairs["lp"].tolist() == [0.5]
        assert [str(r) for r in rejected] == [f"bad.jsonl:2: field 'lp': expected a finite number (the judge's "
                                              f"log-probability margin) or null, got {value!r}"]
    with pytest.raises(MissingColumnError, match="no pair has the AI margin column 'logprob'"):
        read_pairs(tmp_path / "ai.jsonl", margin_columns=("logprob",))
    config = load_config(None, ["ai_labels.source=column", "ai_labels.column=verdict", "ai_labels.margin_column=lp"])
    read, _ = read_pairs(tmp_path / "ai.jsonl", label_columns=("verdict",), margin_columns=("lp",))
    labels = column_ai_labels(read, config.ai_labels)
    assert labels["margin"].tolist()[:2] == [1.5, -3.0] and labels["margin"][2:].isna().all()
    with pytest.raises(ConfigError, match=r"^ai_labels\.margin_column: the pairs have no column 'lp'"):
        column_ai_labels(read.drop(columns="lp"), config.ai_labels)
    with pytest.raises(ConfigError, match="ai_labels.margin_column: must differ from the label columns"):
        load_config(None, ["ai_labels.source=column", "ai_labels.column=verdict", "ai_labels.margin_column=verdict"])


COMBINE_TABLE = [  # first, swapped -> label, consistent
    ("a", "a", "a", True), ("b", "b", "b", True),
    ("a", "b", None, False), ("b", "a", None, False),
    ("a", "tie", "a", False), ("a", None, "a", False), ("tie", "b", "b", False), (None, "a", "a", False),
    ("tie", "tie", None, False), (None, None, None, False), ("tie", None, None, False), (float("nan"), "b", "b", False),
]


def test_combine_orders_truth_table():
    first, swapped, label, consistent = (list(column) for column in zip(*COMBINE_TABLE))
    got_label, got_consistent = combine_orders(first, swapped)
    assert got_label.tolist() == label and got_consistent.tolist() == consistent
    assert got_label.dtype == object and got_consistent.dtype == bool
    # One column: its a/b as they are, nothing consistent (only one order was asked).
    one_label, one_consistent = combine_orders(["a", "b", "tie", None])
    assert one_label.tolist() == ["a", "b", None, None] and one_consistent.tolist() == [False] * 4
    empty_label, empty_consistent = combine_orders([], [])
    assert empty_label.shape == empty_consistent.shape == (0,)


def test_combine_orders_rejects_what_is_no_verdict():
    with pytest.raises(ValueError, match=r"^swapped\[1\]: expected 'a', 'b', 'tie' or None, got 'A'$"):
        combine_orders(["a", "b"], ["a", "A"])
    with pytest.raises(ValueError, match="differ in length: 2 and 1"):
        combine_orders(["a", "b"], ["a"])
    with pytest.raises(TypeError):
        combine_orders("ab")


def test_column_ai_labels_in_the_shape_of_a_judges_labels():
    pairs = pd.DataFrame({"id": list("pqrst"), "first": ["a", "a", "b", "tie", None],
                          "swapped": ["a", "b", None, "tie", "b"]})
    both = load_config(None, ["ai_labels.source=column", "ai_labels.column=first",
                              "ai_labels.swapped_column=swapped"]).ai_labels
    labels = column_ai_labels(pairs, both)
    assert labels.columns.tolist() == ["id", "label", "consistent", "confidence", "margin"]
    assert labels["margin"].isna().all()  # no margin column
    assert labels["label"].tolist() == ["a", None, "b", None, "b"]
    assert labels["consistent"].tolist() == [True, False, False, False, False]
    assert labels["confidence"].tolist() == ["consistent", "inconsistent", "single", "failed", "single"]
    one = column_ai_labels(pairs, dataclasses.replace(both, swapped_column=None))
    assert one["label"].tolist() == ["a", "a", "b", None, None]
    assert one["confidence"].tolist() == ["single", "single", "single", "failed", "failed"]


# The real vicuna80 file: real GPT-4 labels in both orders beside the human majority

@pytest.fixture(scope="module")
def vicuna_path(vicuna80_path) -> Path:
    return vicuna80_path


@pytest.fixture(scope="module")
def vicuna_config(vicuna_path):
    return load_config(None, [f"data.path={vicuna_path}", "data.group_column=question_id",
                              "ai_labels.source=column", "ai_labels.swapped_column=judge_label_swapped"])


def test_vicuna_loads_with_its_extra_columns(vicuna_path):
    pairs, rejected = read_pairs(vicuna_path, label_columns=("judge_label", "judge_label_swapped"),
                                 group_column="question_id")
    assert rejected == [] and len(pairs) == 1750
    assert tuple(pairs.columns) == PAIR_COLUMNS + VICUNA_EXTRAS
    assert pairs["id"].str.fullmatch(r"[0-9a-f]{16}").all() and pairs["id"].is_unique
    assert pairs["record_id"].str.startswith("vicuna80-q").all() and pairs["record_id"].is_unique
    assert pairs["question_id"].dtype == np.int64 and pairs["question_id"].nunique() == 80
    assert set(pairs["human_label"]) == {"a", "b"}  # the record's label: the human majority
    assert set(pairs["judge_label"]) == {"a", "b"}  # the README: pairs GPT-4 tied in the shown order are left out
    assert set(pairs["judge_label_swapped"].map(repr)) == {"'a'", "'b'", "'tie'", "None"}
    assert json.loads(pairs["human_votes"][0]) == {"a": 2, "b": 0, "tie": 1}
    accuracy = (pairs["judge_label"] == pairs["human_label"]).mean()
    assert round(accuracy, 3) == 0.701  # as its README says


def test_vicuna_configured_read_labels_and_splits(vicuna_config, tmp_path):
    pairs, rejected = read_configured_pairs(vicuna_config)
    assert rejected == [] and len(pairs) == 1750
    ai = column_ai_labels(pairs, vicuna_config.ai_labels)
    assert ai["id"].tolist() == pairs["id"].tolist()
    assert int(ai["consistent"].sum()) == 566 + 588  # both orders say a, or both say b
    assert int(ai["label"].isna().sum()) == 384 + 17  # the orders disagree
    assert ai["confidence"].value_counts().to_dict() == {"consistent": 1154, "inconsistent": 401, "single": 195}
    agree = ai["consistent"].to_numpy()
    assert round((ai["label"][agree] == pairs["human_label"][agree]).mean(), 3) == 0.768  # README: 76.8%
    # The same from the pairs as a run stores them (Parquet gives NaN, not None, for a missing verdict).
    pairs.to_parquet(tmp_path / "pairs.parquet")
    stored = column_ai_labels(pd.read_parquet(tmp_path / "pairs.parquet"), vicuna_config.ai_labels)
    pd.testing.assert_frame_equal(stored, ai)
    is_test, in_shard = split_and_shard(pairs, vicuna_config.data, vicuna_config.seed)
    sides = pd.DataFrame({"q": pairs["question_id"], "side": np.where(is_test, "test", np.where(in_shard, "shard",
                                                                                                  "rest"))})
    assert (sides.groupby("q")["side"].nunique() == 1).all()  # each question in one split only
    assert set(sides["side"]) == {"test", "shard", "rest"} and not (is_test & in_shard).any()
    assert 0.1 < is_test.mean() < 0.3


def test_configured_read_names_the_key_of_a_missing_column(vicuna_config, tmp_path):
    a = vicuna_config.ai_labels
    bad_label = dataclasses.replace(vicuna_config, ai_labels=dataclasses.replace(a, column="verdict"))
    with pytest.raises(ConfigError, match=r"^ai_labels\.column: pairs\.jsonl\.gz: no pair has the AI label column "
                                          r"'verdict'; the pairs have id, prompt, .*judge_label_swapped, judge$"):
        read_configured_pairs(bad_label)
    bad_swapped = dataclasses.replace(vicuna_config, ai_labels=dataclasses.replace(a, swapped_column="swapped"))
    with pytest.raises(ConfigError, match=r"^ai_labels\.swapped_column: .*'swapped'"):
        read_configured_pairs(bad_swapped)
    bad_group = dataclasses.replace(vicuna_config, data=dataclasses.replace(vicuna_config.data, group_column="qid"))
    with pytest.raises(ConfigError, match=r"^data\.group_column: pairs\.jsonl\.gz: no pair has the group column 'qid'"):
        read_configured_pairs(bad_group)
    bad_margin = dataclasses.replace(vicuna_config, ai_labels=dataclasses.replace(a, margin_column="logprob_margin"))
    with pytest.raises(ConfigError, match=r"^ai_labels\.margin_column: pairs\.jsonl\.gz: no pair has the AI margin "
                                          r"column 'logprob_margin'"):
        read_configured_pairs(bad_margin)
    with pytest.raises(ConfigError, match=r"^data\.group_column: the pairs have no column 'qid'"):
        split_and_shard(pd.DataFrame({"id": ["x"]}), bad_group.data, 0)
    with pytest.raises(ConfigError, match=r"^ai_labels\.column: the pairs have no column 'verdict'"):
        column_ai_labels(pd.DataFrame({"id": ["x"]}), bad_label.ai_labels)


def test_group_column_value_missing_rejects_the_record(tmp_path):
    write_lines(tmp_path / "g.jsonl", [ai_row(1, qid=1), ai_row(2), ai_row(3, qid=None), ai_row(4, qid="q4")])
    pairs, rejected = read_pairs(tmp_path / "g.jsonl", group_column="qid")
    assert pairs["qid"].tolist() == ["1", "q4"]  # a string and a number: one text column
    assert [str(r) for r in rejected] == [
        f"g.jsonl:{line}: field 'qid': missing or null: every pair needs a group (the group column, "
        "data.group_column)" for line in (2, 3)]
    with pytest.raises(InvalidRecord, match=r"^g\.jsonl:2: field 'qid': missing or null"):
        read_pairs(tmp_path / "g.jsonl", group_column="qid", on_invalid="error")
    # prompt and id are always there; the transcript format has no other column.
    assert len(read_pairs(tmp_path / "g.jsonl", group_column="prompt")[0]) == 4
    with pytest.raises(MissingColumnError, match="no pair has the group column 'qid'"):
        read_pairs(tmp_path / "g.jsonl", group_column="qid", format="hh_rlhf")


def test_vicuna_to_ray_keeps_typed_extra_columns(ray_local, vicuna_path):
    dataset = load_pairs(vicuna_path, label_columns=("judge_label", "judge_label_swapped"))
    assert dataset.count() == 1750
    assert dataset.columns() == list(PAIR_COLUMNS + VICUNA_EXTRAS)
    types = dict(zip(dataset.schema().names, (str(t) for t in dataset.schema().types)))
    assert {types[c] for c in PAIR_COLUMNS} == {"string"}
    assert types["question_id"] == "int64" and types["human_votes"] == "string"
    first = dataset.take(1)[0]
    assert first["label"] is None and first["judge_label"] in ("a", "b")
