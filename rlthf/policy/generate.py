"""A policy's answers to held-out prompts, batched on a Ray Data actor pool (for the win rate)."""
from __future__ import annotations

import json
from typing import Optional

import numpy as np
import pandas as pd

from rlthf.cluster.actors import frame_on_actor_pool
from rlthf.config import WinRateConfig


class PolicyGenerator:
    """Ray Data callable class: a policy's answers to chat prompts.

    ``__call__`` takes ``{"prompt_id", "messages"}`` (messages as JSON) and returns ``{"prompt_id", "response"}``;
    the model loads once in ``__init__``. Left padding, greedy at temperature 0 (seeded sampling otherwise).
    """

    def __init__(self, model: str, gguf_file: Optional[str], max_new_tokens: int, temperature: float = 0.0,
                 num_threads: int = 1, device: str = "cpu", seed: int = 0):
        import torch

        from rlthf.policy.dpo import load_policy

        torch.set_num_threads(num_threads)
        self.model, self.tokenizer = load_policy(model, gguf_file)
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        texts = [self.tokenizer.apply_chat_template(json.loads(m), tokenize=False, add_generation_prompt=True)
                 for m in batch["messages"]]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling = {"do_sample": False}
        if self.temperature > 0:
            torch.manual_seed(self.seed)
            sampling = {"do_sample": True, "temperature": self.temperature, "top_k": 0, "top_p": 1.0}
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id, **sampling)
        new = out[:, enc["input_ids"].shape[1]:]
        responses = [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return {"prompt_id": np.asarray(batch["prompt_id"]), "response": np.asarray(responses, dtype=object)}


def heldout_prompts(config) -> pd.DataFrame:
    """``prompt_id, prompt, messages`` of the first ``winrate.num_prompts`` distinct prompts of the run's test split
    (the split ``rlthf run`` holds out, so no DPO policy trained on them), ordered by a seeded hash."""
    from rlthf.core.dialogue import chat_messages
    from rlthf.core.labels import hash_unit
    from rlthf.data import read_configured_pairs, split_and_shard
    from rlthf.policy.dpo import fit_prompt, load_tokenizer

    pairs, _ = read_configured_pairs(config)
    test = pairs[split_and_shard(pairs, config.data, config.seed)[0]]
    test = test.drop_duplicates("prompt")
    test = test.assign(_order=hash_unit(config.seed, "winrate", test["id"])).sort_values("_order", kind="stable")
    test = test.iloc[:config.winrate.num_prompts]
    tokenizer = load_tokenizer(config.dpo.model, config.dpo.gguf_file)
    messages = [json.dumps(fit_prompt(tokenizer, chat_messages(p), config.winrate.max_prompt_length))
                for p in test["prompt"]]
    return pd.DataFrame({"prompt_id": test["id"].to_numpy(), "prompt": test["prompt"].to_numpy(),
                         "messages": messages})


def generate_responses(prompts: pd.DataFrame, model: str, gguf_file: Optional[str], config: WinRateConfig,
                       *, seed: int = 0) -> pd.DataFrame:
    """``prompt_id, response`` of ``model`` on every prompt, batched on a Ray Data actor pool."""
    out = frame_on_actor_pool(prompts[["prompt_id", "messages"]], PolicyGenerator, {
        "model": model, "gguf_file": gguf_file, "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature, "num_threads": config.cpus_per_actor,
        "device": "cuda" if config.gpus_per_actor > 0 else "cpu", "seed": seed}, config)
    return out.set_index("prompt_id").reindex(prompts["prompt_id"]).reset_index()
