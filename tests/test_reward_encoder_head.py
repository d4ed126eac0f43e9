"""The encoder_head reward backend: the real MiniLM on a Ray Data actor pool, the disk cache, the head."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from rlthf.config import RewardConfig
from rlthf.reward.common import read_meta
from rlthf.reward.embeddings import Embedder, EmbeddingCache, FeatureSpec, embed_missing, text_table
from rlthf.reward.encoder_head import EncoderHeadReward, HeadScorer
from tests.conftest import MINILM
from tests.test_reward_lora import synthetic_pairs


def test_embedder_gives_unit_vectors_and_truncates_from_the_left():
    embed = Embedder(FeatureSpec(MINILM, 32))
    long_prompt = "Human: " + "tell me about the weather " * 40 + "\n\nAssistant:"
    texts = np.array(["hello there", long_prompt + " Sure.", "hello there"], dtype=object)
    out = embed({"text_hash": np.array(["x", "y", "z"]), "text": texts})
    assert out["embedding"].shape == (3, 384) and out["embedding"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["embedding"][0], out["embedding"][2], atol=1e-6)
    (ids,) = embed.token_ids([long_prompt + " Sure."], [len(long_prompt)])
    assert len(ids) == 32 and embed.tokenizer.decode(ids[-4:-1]) == ": sure."  # the response survives the cut
    # the cut is the tokenizer's own left truncation, so caches made before the feature options stay valid
    assert ids == embed.tokenizer(long_prompt + " Sure.", truncation=True, max_length=32)["input_ids"]


def test_cache_embeds_each_text_once_and_persists(ray_local, tmp_path):
    spec = FeatureSpec(MINILM, 64)
    cache = EmbeddingCache(tmp_path, spec)
    texts = text_table(spec, ["", "", "", ""], ["one", "two", "three", "two"])
    assert len(texts) == 3  # each distinct text once
    assert embed_missing(cache, texts, batch_size=2, concurrency=1, cpus_per_actor=1) == 3
    assert embed_missing(cache, texts, batch_size=2, concurrency=1, cpus_per_actor=1) == 0
    reopened = EmbeddingCache(tmp_path, spec)
    assert len(reopened) == 3
    np.testing.assert_array_equal(reopened.get(texts["text_hash"]), cache.get(texts["text_hash"]))
    assert len(EmbeddingCache(tmp_path, FeatureSpec(MINILM, 128))) == 0  # another max_length is another cache
    # the default features keep the cache folder they had before the feature options existed
    assert Path(cache.dir).name == "embeddings-" + hashlib.sha256(f"{MINILM}|64".encode()).hexdigest()[:12]


def test_a_cache_on_a_uri_writes_and_reads_its_parts_through_the_filesystem(ray_local, tmp_path):
    uri = f"file://{tmp_path}/bucket/cache"  # an object store's URI takes the same path (s3://, gs://)
    cache = EmbeddingCache(uri, FeatureSpec(MINILM, 64))
    assert cache.dir.startswith(uri + "/embeddings-") and len(cache) == 0 and cache.dataset() is None
    cache.add(["h1", "h2"], np.array([[1.0, 2.0], [3.0, 4.0]]))
    cache.add(["h3"], np.array([[5.0, 6.0]]))
    again = EmbeddingCache(uri, FeatureSpec(MINILM, 64))
    assert len(again) == 3 and len(again.parts()) == 2
    np.testing.assert_array_equal(again.get(["h3", "h1"]), [[5.0, 6.0], [1.0, 2.0]])
    assert sorted(again.dataset().to_pandas()["text_hash"]) == ["h1", "h2", "h3"]
    with pytest.raises(KeyError, match="has no embedding of text h9"):
        again.get(["h9"])


@pytest.fixture(scope="module")
def trained(ray_local, hh_rlhf_path, tmp_path_factory):
    config = RewardConfig(max_length=64, epochs=40, learning_rate=0.01, batch_size=16)
    backend = EncoderHeadReward(config, tmp_path_factory.mktemp("cache"))
    train = synthetic_pairs(hh_rlhf_path, 80, seed=3)
    checkpoint = backend.train(ray_local.data.from_pandas(train), tmp_path_factory.mktemp("ckpt"), seed=0)
    return backend, checkpoint


def test_head_learns_a_learnable_preference_and_keeps_the_best_epoch(ray_local, hh_rlhf_path, trained):
    backend, checkpoint = trained
    meta = read_meta(checkpoint)
    history = [h["val_loss"] for h in meta["history"]]
    assert meta["backend"] == "encoder_head" and meta["best_epoch"] == int(np.argmin(history))
    assert meta["best_val_loss"] == min(history)
    held_out = synthetic_pairs(hh_rlhf_path, 40, skip=400, seed=4)
    scores = backend.score(ray_local.data.from_pandas(held_out), checkpoint).to_pandas()
    assert sorted(scores["id"]) == sorted(held_out["id"])
    scores = scores.set_index("id").loc[held_out["id"]]
    margin = np.where(held_out["label"] == "a", 1, -1) * (scores["reward_a"] - scores["reward_b"]).to_numpy()
    assert (margin > 0).mean() >= 0.9


def test_head_scorer_on_a_plain_batch_matches_ray(ray_local, hh_rlhf_path, trained):
    backend, checkpoint = trained
    pairs = synthetic_pairs(hh_rlhf_path, 5, skip=600, seed=5)
    emb_a, emb_b = backend.embeddings(pairs)
    plain = HeadScorer(str(checkpoint))({"id": pairs["id"].to_numpy(), "emb_a": emb_a, "emb_b": emb_b})
    via_ray = backend.score(ray_local.data.from_pandas(pairs), checkpoint).to_pandas().set_index("id")
    np.testing.assert_allclose(plain["reward_a"], via_ray.loc[pairs["id"], "reward_a"].to_numpy(dtype=float))


def test_bad_training_label_names_the_value(ray_local, hh_rlhf_path, tmp_path):
    pairs = synthetic_pairs(hh_rlhf_path, 6, seed=6).assign(label="chosen")
    with pytest.raises(ValueError, match="'chosen'"):
        EncoderHeadReward(RewardConfig(max_length=64), tmp_path).train(pairs, tmp_path / "ckpt", seed=0)


def test_left_cut_reads_only_the_tail_and_gets_the_same_tokens(hh_rlhf_path):
    from rlthf.data import read_pairs
    from rlthf.reward.embeddings import text_tail

    assert text_tail("one two three four", 9) == " four" and text_tail("abcdefghij", 4) == "abcdefghij"
    assert text_tail("short", 10) == "short"
    embed = Embedder(FeatureSpec(MINILM, 32))
    pairs, _ = read_pairs(hh_rlhf_path, max_pairs=150)
    texts = [p + r for p, r in zip(pairs["prompt"], pairs["response_a"])]
    texts += ["x" * 5000, "word " * 3 + "y" * 3000, "Human: hi\n\nAssistant: ok"]  # no boundary, one far off, short
    chars = [0] * len(texts)
    assert embed.token_ids(texts, chars) == embed.cut(texts, chars)
    assert sum(len(t) > 8 * 32 for t in texts) > 100  # most were read from their tail
