"""Reward-model export: the exported folder loads with plain transformers and scores pairs as rlthf's scorers do."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rlthf.config import RewardConfig
from rlthf.reward.common import reward_text, write_meta
from rlthf.reward.encoder_head import EncoderHeadReward
from rlthf.reward.export import export_reward_model
from rlthf.reward.lora import MODEL_DIR, LoraScorer, load_base_model, load_tokenizer, new_lora_model
from rlthf.models import resolve_model
from tests.conftest import MINILM
from tests.test_reward_lora import synthetic_pairs


def hf_rewards(folder, texts, **load_kwargs) -> np.ndarray:
    """Rewards read the way an RLHF trainer reads them: plain Auto classes, ``logits[:, 0]``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, **load_kwargs).eval()
    assert model.config.num_labels == 1
    with torch.no_grad():
        rewards = [model(**tokenizer(t, truncation=True, return_tensors="pt")).logits[0, 0].item() for t in texts]
    return np.asarray(rewards)


def test_encoder_head_export_scores_like_the_head_scorer(ray_local, hh_rlhf_path, embedding_cache, tmp_path):
    config = RewardConfig(max_length=64, epochs=10, learning_rate=0.01, batch_size=8, head="mlp", head_hidden=16)
    backend = EncoderHeadReward(config, embedding_cache)
    pairs = synthetic_pairs(hh_rlhf_path, 24, seed=5)
    checkpoint = backend.train(pairs, tmp_path / "ckpt", seed=0)
    expected = backend.score(pairs.iloc[:4], checkpoint).to_pandas().set_index("id").loc[pairs["id"][:4]]

    folder = export_reward_model(checkpoint, tmp_path / "hf")
    texts_a = [reward_text(p, r) for p, r in zip(pairs["prompt"][:4], pairs["response_a"][:4])]
    texts_b = [reward_text(p, r) for p, r in zip(pairs["prompt"][:4], pairs["response_b"][:4])]
    got_a = hf_rewards(folder, texts_a, trust_remote_code=True)
    got_b = hf_rewards(folder, texts_b, trust_remote_code=True)
    np.testing.assert_allclose(got_a, expected["reward_a"], atol=1e-5)
    np.testing.assert_allclose(got_b, expected["reward_b"], atol=1e-5)
    assert np.ptp(got_a - got_b) > 0  # a real head: the margins differ between pairs


def test_lora_export_is_a_plain_merged_model_that_scores_like_the_lora_scorer(hh_rlhf_path, tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "ckpt"
    tokenizer = load_tokenizer(resolve_model(MINILM))
    model = new_lora_model(load_base_model(resolve_model(MINILM), tokenizer), r=4, alpha=8, dropout=0.0,
                           target_modules=None)
    with torch.no_grad():  # a trained-looking adapter: lora_B starts at zero, which would make merging trivial
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.save_pretrained(checkpoint / MODEL_DIR)
    tokenizer.save_pretrained(checkpoint / MODEL_DIR)
    write_meta(checkpoint, backend="lora", model=MINILM, max_length=48)

    pairs = synthetic_pairs(hh_rlhf_path, 3, seed=6)
    expected = LoraScorer(str(checkpoint))({k: pairs[k].to_numpy() for k in ("id", "prompt", "response_a",
                                                                             "response_b")})
    folder = export_reward_model(checkpoint, tmp_path / "hf")
    assert not (folder / "modeling_rlthf_reward.py").exists()  # a stock class: no remote code needed
    got_a = hf_rewards(folder, [reward_text(p, r) for p, r in zip(pairs["prompt"], pairs["response_a"])])
    got_b = hf_rewards(folder, [reward_text(p, r) for p, r in zip(pairs["prompt"], pairs["response_b"])])
    np.testing.assert_allclose(got_a, expected["reward_a"], atol=1e-4)
    np.testing.assert_allclose(got_b, expected["reward_b"], atol=1e-4)


def test_export_refuses_a_non_empty_folder_and_a_non_checkpoint(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    write_meta(tmp_path / "ckpt", backend="encoder_head")
    with pytest.raises(FileExistsError):
        export_reward_model(tmp_path / "ckpt", tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        export_reward_model(tmp_path / "nothing", tmp_path / "out2")
