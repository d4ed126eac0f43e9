"""Which reward backend a config asks for, and the fixed reward configs behind the simulations."""
from __future__ import annotations

from pathlib import Path

from rlthf.config import RewardConfig, RLTHFConfig

SIMULATION_MAX_LENGTH = 256  # fixed, so every reward backend is measured against the same ground truth


def make_reward_backend(config: RewardConfig, cache_dir: str | Path):
    """The backend of ``config.backend``: ``train(pairs) -> checkpoint`` and ``score(pairs, checkpoint)``."""
    if config.backend == "encoder_head":
        from rlthf.reward.encoder_head import EncoderHeadReward

        return EncoderHeadReward(config, cache_dir)
    from rlthf.reward.lora import LoraReward

    return LoraReward(config)


def simulation_reward_config(model: str) -> RewardConfig:
    """The frozen-encoder head behind the simulated labeler's hardness and the paper's flipped ground truth."""
    return RewardConfig(backend="encoder_head", model=model, max_length=SIMULATION_MAX_LENGTH)


def committee_reward_config(config: RLTHFConfig) -> RewardConfig:
    """The reward backend's own head config with encoder_head; MiniLM's (the hardness model) with lora."""
    if config.reward.backend == "encoder_head":
        return config.reward
    return simulation_reward_config(config.ai_labels.hardness_model)
