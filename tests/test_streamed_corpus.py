"""The corpus past the driver's reach: texts stream from Parquet through Ray Data, embeddings are joined from the
cache by text hash (or embedded by the actor pool), heads train in a Ray task, and curated.parquet is written
batch by batch. A run made to take that path on a small corpus (its thresholds lowered) ships what the driver's
own path ships."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import rlthf.reward.encoder_head as encoder_head
import rlthf.run.corpus as corpus
from rlthf.config import RewardConfig, load_config
from rlthf.reward.embeddings import EmbeddingCache, FeatureSpec, pair_embeddings, streamed_pair_embeddings
from rlthf.run.driver import run
from tests.conftest import MINILM, REPO
from tests.test_reward_lora import synthetic_pairs


def config(hh_rlhf_path, cache, output_dir, *settings):
    return load_config(REPO / "configs/demo.yaml", [
        f"output_dir={output_dir}", f"data.path={hh_rlhf_path}", "data.max_pairs=200",
        *([f"reward.cache_dir={cache}"] if cache else []), "selection.iterations=0", "reward.score_concurrency=1",
        *settings])


def test_a_run_whose_corpus_streams_through_a_bucket_ships_what_the_driver_run_ships(ray_local, hh_rlhf_path,
                                                                                    embedding_cache, tmp_path,
                                                                                    monkeypatch):
    direct = run(config(hh_rlhf_path, embedding_cache, tmp_path / "direct"), echo=lambda _: None)
    monkeypatch.setattr(corpus, "DRIVER_ROWS", 10)  # every text the run reads streams from Parquet
    monkeypatch.setattr(encoder_head, "LOCAL_PAIRS", 60)  # the shard (about 40) and test set stay local, the corpus not
    # a folder stands for the bucket (storage_path: s3://... on a cluster), the run directory for a disk that only
    # the driver has: once the run has started, its texts are gone from there
    bucket, local = tmp_path / "bucket", tmp_path / "streamed"

    def lose_local_texts(row: dict) -> None:
        (local / "data" / "texts.parquet").unlink(missing_ok=True)

    stream = run(config(hh_rlhf_path, None, local, f"storage_path={bucket}", "reward.cache_dir=null"),
                 echo=lambda _: None, on_iteration=lose_local_texts)
    a = pd.read_parquet(direct.curated_path).set_index("id").sort_index()
    b = pd.read_parquet(stream.curated_path).set_index("id").sort_index()
    assert len(a) > 150 and list(a.columns) == list(b.columns) and a.index.equals(b.index)
    for column in ("prompt", "chosen", "rejected", "label_source", "in_shard"):
        assert a[column].equals(b[column]), column
    np.testing.assert_allclose(a["reward_margin"], b["reward_margin"], atol=1e-6)  # float32 heads, other batches
    assert [r["test_acc"] for r in direct.metrics] == [r["test_acc"] for r in stream.metrics]
    assert direct.summary["curated_label_acc"] == stream.summary["curated_label_acc"]
    # the streamed run embedded its pairs once, into a folder every later pass read; the direct one did not
    steps = {name: json.loads((r.run_dir / "steps.json").read_text()) for name, r in (("d", direct), ("s", stream))}
    assert "features" not in steps["d"] and steps["s"]["features"]["pairs"] == len(pd.read_parquet(
        stream.run_dir / "data/pairs.parquet"))
    features = pd.read_parquet(bucket / steps["s"]["features"]["path"])
    assert set(features.columns) == {"id", "emb_a", "emb_b"} and features["id"].is_unique
    # what Ray's workers wrote (the features, the embeddings they computed) is in the bucket alone
    assert not (local / steps["s"]["features"]["path"]).exists()
    assert list(bucket.glob("cache/embeddings-*/part-*.parquet")) and not (local / "cache").exists()


def test_streamed_embeddings_join_the_cache_embed_the_rest_once_and_train_the_same_head(ray_local, hh_rlhf_path,
                                                                                      tmp_path, monkeypatch):
    spec = FeatureSpec(MINILM, 32)
    pairs = synthetic_pairs(hh_rlhf_path, 30, seed=7)
    cache = EmbeddingCache(tmp_path / "cache", spec)
    emb_a, emb_b = pair_embeddings(cache, pairs.iloc[:5])  # five pairs cached, the others not
    assert len(cache) == 10
    out = streamed_pair_embeddings(cache, ray_local.data.from_pandas(pairs), pair_count=len(pairs), batch_size=4,
                                   concurrency=2, cpus_per_actor=2).to_pandas().set_index("id").loc[pairs["id"]]
    assert len(cache) == 60 and "prompt" not in out.columns and (out["label"] == pairs["label"].to_numpy()).all()
    np.testing.assert_array_equal(np.stack(out["emb_a"])[:5], emb_a)
    np.testing.assert_array_equal(np.stack(out["emb_b"])[:5], emb_b)
    direct_a, direct_b = pair_embeddings(EmbeddingCache(tmp_path / "other", spec), pairs)
    np.testing.assert_allclose(np.stack(out["emb_a"]), direct_a, atol=1e-5)
    np.testing.assert_allclose(np.stack(out["emb_b"]), direct_b, atol=1e-5)

    # a head trained on streamed rows (in a Ray task, in the rows' order) is the head trained here
    config = RewardConfig(max_length=32, epochs=5, batch_size=8)
    rows = pairs.assign(row=np.arange(len(pairs)))
    here = encoder_head.EncoderHeadReward(config, tmp_path / "cache").train(rows, tmp_path / "here", seed=0)
    monkeypatch.setattr(encoder_head, "LOCAL_PAIRS", 10)
    shuffled = ray_local.data.from_pandas(rows.sample(frac=1.0, random_state=1))
    there = encoder_head.EncoderHeadReward(config, tmp_path / "cache").train(shuffled, tmp_path / "there", seed=0)
    assert len(cache) == 60  # everything was cached: nothing embedded twice
    a, b = (torch.load(path / "head.pt", weights_only=True) for path in (here, there))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pairs_dataset_keeps_every_row_and_its_columns(ray_local, tmp_path, monkeypatch):
    from rlthf.rundir import RunDir

    rd = RunDir(tmp_path)
    texts = pd.DataFrame({"id": [f"p{i}" for i in range(30)], "prompt": [f"q{i}" for i in range(30)],
                          "response_a": ["a"] * 30, "response_b": ["b"] * 30})
    corpus.write_texts(rd, texts)
    rows = pd.DataFrame({"id": ["p3", "p7", "p3", "p29"], "label": ["a", "b", "a", "b"], "row": [0, 1, 2, 3]})
    small = corpus.pairs_dataset(rd, rows).to_pandas()
    monkeypatch.setattr(corpus, "DRIVER_ROWS", 2)
    large = corpus.pairs_dataset(rd, rows).to_pandas().sort_values("row").reset_index(drop=True)
    pd.testing.assert_frame_equal(small[list(large.columns)], large, check_dtype=False)
    assert small["prompt"].tolist() == ["q3", "q7", "q3", "q29"] and small["row"].tolist() == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="has no row for pair 'nope'"):
        corpus.pair_texts(rd, ["p1", "nope"])


def test_a_run_directory_with_texts_in_its_pairs_file_resumes(hh_rlhf_path, tmp_path):
    from rlthf.rundir import RunDir
    from rlthf.run.steps import prepare

    cfg = load_config(REPO / "configs/demo.yaml", [f"output_dir={tmp_path}", f"data.path={hh_rlhf_path}",
                                                   "data.max_pairs=50", "data.ground_truth=raw"])
    rd = RunDir(tmp_path)
    pairs = prepare(rd, cfg, str(tmp_path / "cache"))
    assert "prompt" not in pairs.columns and len(pd.read_parquet(corpus.texts_path(rd))) == len(pairs)
    texts = corpus.pair_texts(rd, pairs["id"])
    # as an older rlthf left it: the texts in pairs.parquet, no texts.parquet
    pairs.merge(texts, on="id").to_parquet(rd.path("data", "pairs.parquet"))
    corpus.texts_path(rd).unlink()
    again = prepare(rd, cfg, str(tmp_path / "cache"))
    assert again.equals(pairs) and corpus.pair_texts(rd, pairs["id"]).equals(texts)


def test_a_small_run_embeds_its_shard_and_test_texts_in_one_pass_before_training(ray_local, hh_rlhf_path, tmp_path,
                                                                                   monkeypatch):
    import rlthf.reward.embeddings as embeddings
    from rlthf.reward.backends import make_reward_backend
    from rlthf.rundir import RunDir
    from rlthf.run.steps import features_step, prepare

    passes = []  # the texts of every embedding pass (each loads the backbone)
    embed_texts = embeddings.embed_texts
    monkeypatch.setattr(embeddings, "embed_texts", lambda cache, todo, **kw: passes.append(len(todo)) or
                        embed_texts(cache, todo, **kw))
    cfg = config(hh_rlhf_path, tmp_path / "cache", tmp_path / "run", "data.max_pairs=60", "data.shard_fraction=0.5",
                 "data.ground_truth=raw")
    rd = RunDir(tmp_path / "run")
    pairs = prepare(rd, cfg, str(tmp_path / "cache"))
    backend = make_reward_backend(cfg.reward, str(tmp_path / "cache"))
    features_step(rd, backend, pairs)
    looped_over = (pairs["in_shard"] | (pairs["split"] == "test")).to_numpy()
    assert 0 < looped_over.sum() < len(pairs)
    texts = corpus.pair_texts(rd, pairs["id"])
    spec = backend.features

    def keys(rows):
        return {spec.text_key(p, r) for side in "ab" for p, r in zip(rows["prompt"], rows[f"response_{side}"])}

    assert passes == [len(keys(texts[looped_over]))]  # one pass, every distinct text of the shard and test set
    cached = set(EmbeddingCache(tmp_path / "cache", spec).lookup(keys(texts)))
    # the corpus pairs outside the shard wait for the final step that scores them
    assert cached == keys(texts[looped_over]) and keys(texts[~looped_over]) - cached
    features_step(rd, backend, pairs)  # a resumed run finds every text cached
    assert passes[1:] == [0]  # nothing left to embed


@pytest.mark.parametrize("column", ["split", "test_draw"])
def test_a_data_column_named_like_one_the_run_makes_is_refused(tmp_path, column):
    import json

    from rlthf.rundir import RunDir
    from rlthf.run.steps import prepare

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no", column: "x"}) + "\n"
                            for i in range(4)))
    cfg = load_config(REPO / "configs/demo.yaml", [f"output_dir={tmp_path / 'run'}", f"data.path={data}",
                                                   "data.ground_truth=raw"])
    with pytest.raises(ValueError, match=f"column '{column}'"):
        prepare(RunDir(tmp_path / "run"), cfg, str(tmp_path / "cache"))


def test_data_without_a_valid_pair_is_a_clear_error(tmp_path):
    from rlthf.rundir import RunDir
    from rlthf.run.steps import prepare

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "q", "chosen": "", "rejected": "no"}\n{"prompt": "q2"}\n')
    cfg = load_config(REPO / "configs/demo.yaml", [f"output_dir={tmp_path / 'run'}", f"data.path={data}",
                                                   "data.ground_truth=raw"])
    with pytest.raises(ValueError, match="no valid pair; 2 records rejected"):
        prepare(RunDir(tmp_path / "run"), cfg, str(tmp_path / "cache"))
    assert len((tmp_path / "run/data/rejected.jsonl").read_text().splitlines()) == 2


def test_preference_rows_put_the_preferred_response_first():
    import pyarrow as pa

    texts = pa.table({"id": ["x", "y", "z"], "prompt": ["p", "q", "r"], "response_a": ["A1", "A2", "A3"],
                      "response_b": ["B1", "B2", "B3"]})
    labels = pa.table({"label": ["a", "b", None], "label_source": ["human", "rm", "ai"],
                       "reward_margin": [0.5, 1.5, 0.0], "in_shard": [True, False, False]})
    out = corpus.preference_rows(texts, labels).to_pandas()
    assert list(out.columns) == ["prompt", "chosen", "rejected", "id", "label_source", "reward_margin", "in_shard"]
    assert out[["prompt", "chosen", "rejected"]].values.tolist() == [["p", "A1", "B1"], ["q", "B2", "A2"],
                                                                     ["r", "B3", "A3"]]
    assert out["label_source"].tolist() == ["human", "rm", "ai"] and out["reward_margin"].tolist() == [0.5, 1.5, 0]
    assert out["id"].tolist() == ["x", "y", "z"] and out["in_shard"].tolist() == [True, False, False]


@pytest.mark.parametrize("text_row", [True, False])  # prepare's row numbers, or an older run's ids alone
def test_curated_file_and_reads_by_id_go_a_row_group_at_a_time_in_the_texts_order(tmp_path, text_row):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlthf.rundir import RunDir

    rd = RunDir(tmp_path)
    ids = [f"p{i:02d}" for i in range(20)]
    texts = pd.DataFrame({"id": ids, "prompt": [f"q{i}" for i in range(20)], "response_a": [f"a{i}" for i in range(20)],
                          "response_b": [f"b{i}" for i in range(20)]})
    pq.write_table(pa.Table.from_pandas(texts, preserve_index=False), corpus.texts_path(rd), row_group_size=3)
    assert pq.ParquetFile(corpus.texts_path(rd)).num_row_groups == 7
    # the test pairs (p00-p04) are no part of the curated corpus; the curated rows come in any order
    curated = pd.DataFrame({"id": ids[5:], "label": ["a", "b", "b"] * 5, "label_source": "ai",
                            "reward_margin": np.arange(15.0), "in_shard": [True, False, False] * 5})
    if text_row:
        curated["text_row"] = np.arange(5, 20)
    corpus.write_curated(rd, tmp_path / "curated.parquet", curated.sample(frac=1.0, random_state=0))
    out = pd.read_parquet(tmp_path / "curated.parquet")
    assert out["id"].tolist() == ids[5:]  # the texts' order
    assert out["chosen"].tolist() == [f"{side}{i}" for i, side in zip(range(5, 20), "abb" * 5)]
    assert out["rejected"].tolist() == [f"{side}{i}" for i, side in zip(range(5, 20), "baa" * 5)]
    assert out["reward_margin"].tolist() == list(np.arange(15.0))
    assert out["in_shard"].tolist() == [True, False, False] * 5
    corpus.write_curated(rd, tmp_path / "empty.parquet", curated.iloc[:0])  # no pair: still a file, and its columns
    assert list(pd.read_parquet(tmp_path / "empty.parquet").columns) == list(out.columns)

    # a folder read by id: repeats kept in the order asked, a row written twice read once
    folder = tmp_path / "features"
    folder.mkdir()
    texts.iloc[:12].to_parquet(folder / "part-0.parquet")
    texts.iloc[10:].to_parquet(folder / "part-1.parquet")
    got = corpus.rows_by_id(folder, ["p11", "p03", "p11", "p19"])
    assert got["id"].tolist() == ["p11", "p03", "p11", "p19"] and got["prompt"].tolist() == ["q11", "q3", "q11", "q19"]


def test_ids_are_matched_and_aligned_in_arrow_whatever_their_order_type_or_count():
    ids = pd.Series(["p3", "p1", "p9"], dtype="str")
    frame = pd.DataFrame({"id": ["p1", "p2", "p3"], "label": ["a", None, "b"]})  # object columns, another order
    assert corpus.column_by_id(frame, "label", ids).tolist() == ["b", "a", None]  # p9: none
    assert corpus.column_by_id(frame, "label", frame["id"]).tolist() == ["a", None, "b"]  # in order: as it is
    assert corpus.has_id(ids, frame["id"]).tolist() == [True, True, False]
    empty = pd.DataFrame({"id": pd.Series([], dtype=object), "label": pd.Series([], dtype=object)})  # no audit
    assert corpus.has_id(ids, empty["id"]).tolist() == [False] * 3
    assert corpus.column_by_id(empty, "label", ids).tolist() == [None] * 3
    assert corpus.has_id([], frame["id"]).tolist() == []


def test_arrow_strings_become_one_python_object_per_distinct_value():
    import pyarrow as pa

    chunked = pa.chunked_array([["a", "b", None], ["a"]])
    values = corpus.numpy_values(chunked)
    assert values.dtype == object and values.tolist() == ["a", "b", None, "a"]
    assert values[0] is values[3]  # shared: a million labels cost pointers, not a million strings
    assert corpus.numpy_values(pd.Series(["x", None, "x"], dtype="str")).tolist() == ["x", None, "x"]
    assert corpus.numpy_values(pa.array([1.5, 2.0])).tolist() == [1.5, 2.0]  # other types as Arrow gives them
    assert corpus.numpy_values(pa.array([], pa.string())).tolist() == []
